"""A real mosquitto for tests: free port, temp config, stop/restart with persistence, TLS.

Usage (a fixture of your own in your test module)::

    from broker import MosquittoBroker, make_test_pki

    @pytest.fixture
    def broker(tmp_path):
        with MosquittoBroker(tmp_path / "broker") as running:
            yield running

    def test_something(broker):
        with broker.publisher() as pub:
            pub.publish("edge/v1/req/c", b"...")

`MosquittoBroker` runs the Debian package's /usr/sbin/mosquitto with a config
written into its own directory: persistence on (saved when the broker is
stopped with SIGTERM, so `restart()` keeps sessions and queued messages), a
listener on 127.0.0.1 at a free port that stays the same across restarts, and
optionally TLS with a throwaway CA made by `make_test_pki` and a password file
made by mosquitto_passwd. Its log is read continuously (so the pipe never
fills) and tests can wait for a line with `wait_for_log` instead of sleeping.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
_READY_RE = re.compile(r"mosquitto version \S+ running")
_LOG_LINES_KEPT = 20_000


# ---------------------------------------------------------------- test PKI


@dataclass(frozen=True)
class TestPKI:
    """A throwaway CA with one server and one client certificate (PEM files)."""

    __test__ = False  # not a pytest test class, despite the name

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_test_pki(
    directory: Path,
    *,
    ca_name: str = "edge test CA",
    server_dns: Sequence[str] = ("localhost",),
    server_ips: Sequence[str] = ("127.0.0.1",),
    client_name: str = "edge-test-client",
) -> TestPKI:
    """Makes a CA, a server certificate for 127.0.0.1/localhost and a client certificate.

    EC P-256 keys: quick to generate. Two calls give two unrelated CAs, which is
    how a test gets a "wrong CA".
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        name: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName] | None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server_san: list[x509.GeneralName] = [x509.DNSName(d) for d in server_dns]
    server_san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
    server_cert, server_key = leaf(server_dns[0], ExtendedKeyUsageOID.SERVER_AUTH, server_san)
    client_cert, client_key = leaf(client_name, ExtendedKeyUsageOID.CLIENT_AUTH, None)

    def write_cert(path: Path, cert: x509.Certificate) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    return TestPKI(
        ca_cert=write_cert(directory / "ca.pem", ca_cert),
        server_cert=write_cert(directory / "server.pem", server_cert),
        server_key=write_key(directory / "server.key", server_key),
        client_cert=write_cert(directory / "client.pem", client_cert),
        client_key=write_key(directory / "client.key", client_key),
    )


# ---------------------------------------------------------------- the broker


class BrokerError(RuntimeError):
    pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MosquittoBroker:
    """One mosquitto process with its own directory, config, port and persistence file.

    Threads: the test thread calls every public method; one reader thread per
    running process drains mosquitto's log into `_log_lines` under `_log_cond`.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        directory: Path,
        *,
        pki: TestPKI | None = None,
        require_client_cert: bool = False,
        users: Mapping[str, str] | None = None,
        extra_config: Sequence[str] = (),
        executable: str = MOSQUITTO,
    ) -> None:
        if require_client_cert and pki is None:
            raise ValueError("require_client_cert needs a pki")
        self.directory = directory
        self.pki = pki
        self.require_client_cert = require_client_cert
        self.users: dict[str, str] = dict(users or {})
        if self.users:
            # The helper's own publisher needs a login when anonymous access is off.
            self.users.setdefault("test-publisher", secrets.token_urlsafe(16))
        self.extra_config = list(extra_config)
        self.executable = executable
        self.port = 0  # chosen on the first start, kept across restarts
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._log_cond = threading.Condition()
        self._log_lines: list[str] = []
        self._log_dropped = 0  # lines forgotten from the front (bounded memory)
        directory.mkdir(parents=True, exist_ok=True)

    # -- lifecycle

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Starts mosquitto and returns once it listens (its "running" log line)."""
        if self.running:
            raise BrokerError("broker already running")
        first_start = self.port == 0
        for _attempt in range(5 if first_start else 1):
            if first_start:
                self.port = free_port()
            self._write_config()
            if self._launch(timeout_s):
                return
            in_use = any("Address already in use" in line for line in self.log_tail(20))
            if not (first_start and in_use):
                break  # only a lost race for a fresh port is worth another try
        raise BrokerError("mosquitto did not start:\n" + "\n".join(self.log_tail(30)))

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: mosquitto saves its persistence file (sessions, queued messages) and exits."""
        self._end(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """SIGKILL: a crash; whatever was not saved yet is lost."""
        self._end(signal.SIGKILL, 10.0)

    def restart(self, timeout_s: float = 10.0) -> None:
        self.stop(timeout_s)
        self.start(timeout_s)

    # -- log

    def log_cursor(self) -> int:
        """A position in the log; pass it to `wait_for_log` to see only later lines."""
        with self._log_cond:
            return self._log_dropped + len(self._log_lines)

    def log_tail(self, count: int = 50) -> list[str]:
        with self._log_cond:
            return self._log_lines[-count:]

    def wait_for_log(self, pattern: str, *, after: int = 0, timeout_s: float = 10.0) -> str:
        """Waits until a log line at or after cursor `after` matches regex `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._log_cond:
            position = after
            while True:
                start = max(position - self._log_dropped, 0)
                for line in self._log_lines[start:]:
                    if regex.search(line):
                        return line
                position = self._log_dropped + len(self._log_lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no mosquitto log line matched {pattern!r} within {timeout_s} s; "
                        "last lines:\n" + "\n".join(self._log_lines[-15:])
                    )
                self._log_cond.wait(remaining)

    # -- clients

    def client_tls_kwargs(self, *, with_client_cert: bool | None = None) -> dict[str, str]:
        """Arguments for paho's tls_set() that this broker accepts ({} without TLS)."""
        if self.pki is None:
            return {}
        kwargs = {"ca_certs": str(self.pki.ca_cert)}
        if self.require_client_cert if with_client_cert is None else with_client_cert:
            kwargs["certfile"] = str(self.pki.client_cert)
            kwargs["keyfile"] = str(self.pki.client_key)
        return kwargs

    def publisher(self, client_id: str | None = None) -> Publisher:
        """A connected MQTT 3.1.1 publisher (a request platform stand-in) for this broker."""
        login = ("test-publisher", self.users["test-publisher"]) if self.users else None
        return Publisher(
            self.host,
            self.port,
            client_id=client_id or f"test-pub-{secrets.token_hex(4)}",
            tls_kwargs=self.client_tls_kwargs(),
            login=login,
        )

    # -- internals

    def _write_config(self) -> Path:
        persistence_dir = self.directory / "persistence"
        persistence_dir.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "persistence true",
            f"persistence_location {persistence_dir}/",
            "log_dest stderr",  # unbuffered, unlike stdout into a pipe
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_type subscribe",
            "connection_messages true",
            "log_timestamp false",
        ]
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to user "mosquitto", which cannot
            # write into a test's private temp directory: stay the current user.
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        if self.users:
            password_file = self.directory / "passwords"
            password_file.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    [MOSQUITTO_PASSWD, "-b", str(password_file), user, password],
                    check=True, capture_output=True, timeout=30,
                )
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.pki is not None:
            lines += [
                f"cafile {self.pki.ca_cert}",
                f"certfile {self.pki.server_cert}",
                f"keyfile {self.pki.server_key}",
                f"require_certificate {'true' if self.require_client_cert else 'false'}",
            ]
        lines += self.extra_config
        path = self.directory / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _launch(self, timeout_s: float) -> bool:
        with self._log_cond:
            cursor = self._log_dropped + len(self._log_lines)
        process = subprocess.Popen(
            [self.executable, "-c", str(self.directory / "mosquitto.conf")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
        )
        self._process = process
        self._reader = threading.Thread(
            target=self._read_log, args=(process,), name=f"mosquitto-log-{self.port}", daemon=True
        )
        self._reader.start()
        try:
            line = self.wait_for_log(
                _READY_RE.pattern + r"|\[broker helper\] mosquitto exited",
                after=cursor,
                timeout_s=timeout_s,
            )
        except TimeoutError:
            line = ""
        if _READY_RE.search(line) and process.poll() is None:
            return True
        self._end(signal.SIGKILL, 5.0)
        return False

    def _read_log(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            with self._log_cond:
                self._log_lines.append(raw.rstrip("\n"))
                if len(self._log_lines) > _LOG_LINES_KEPT:
                    excess = len(self._log_lines) - _LOG_LINES_KEPT // 2
                    del self._log_lines[:excess]
                    self._log_dropped += excess
                self._log_cond.notify_all()
        with self._log_cond:
            self._log_lines.append(f"[broker helper] mosquitto exited ({process.wait()})")
            self._log_cond.notify_all()

    def _end(self, sig: signal.Signals, timeout_s: float) -> None:
        process, reader = self._process, self._reader
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if reader is not None:
            reader.join(5)
        if process.stdout is not None:
            process.stdout.close()
        self._process = None
        self._reader = None


class Publisher:
    """A plain paho client that publishes and waits for the broker's PUBACK.

    Stands in for the request platform: a separate MQTT client, as in service.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        tls_kwargs: Mapping[str, str] | None = None,
        login: tuple[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        # Many messages in flight at once, so a flood is a flood.
        self._client.max_inflight_messages_set(1000)
        if tls_kwargs:
            self._client.tls_set(
                ca_certs=tls_kwargs.get("ca_certs"),
                certfile=tls_kwargs.get("certfile"),
                keyfile=tls_kwargs.get("keyfile"),
            )
        if login is not None:
            self._client.username_pw_set(*login)
        connected = threading.Event()
        self._connect_reason: str = "no answer"

        def on_connect(
            client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
        ) -> None:
            self._connect_reason = str(reason)
            connected.set()

        self._client.on_connect = on_connect
        self._client.connect(host, port)
        self._client.loop_start()
        if not connected.wait(timeout_s) or self._connect_reason != "Success":
            self.close()
            raise BrokerError(f"test publisher could not connect: {self._connect_reason}")

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout_s: float = 10.0) -> None:
        """Publishes and waits until the broker has it (PUBACK for QoS 1)."""
        self.publish_many([(topic, payload)], qos=qos, timeout_s=timeout_s)

    def publish_many(
        self, messages: Iterable[tuple[str, bytes]], qos: int = 1, timeout_s: float = 30.0
    ) -> None:
        infos = [self._client.publish(topic, payload, qos=qos) for topic, payload in messages]
        deadline = time.monotonic() + timeout_s
        for info in infos:
            info.wait_for_publish(max(deadline - time.monotonic(), 0.001))
            if not info.is_published():
                raise BrokerError(f"publish not acknowledged within {timeout_s} s (rc={info.rc})")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
