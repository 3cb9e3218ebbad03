"""The MQTT transport's TLS and login against a real mosquitto, and the setup mistakes a user makes.

The CA and certificates are made in the test with `cryptography`
(tests/broker.py make_test_pki); the broker's password file by mosquitto_passwd.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import MosquittoBroker, TestPKI, make_test_pki
from edge.share.mqtt import (
    MAX_PASSWORD_FILE_BYTES,
    ListenerStats,
    MqttSetupError,
    RequestListener,
    load_or_create_client_id,
    read_password_file,
)
from test_mqtt import CELL_TOPIC, WAIT_S, Collector, listening, make_listener


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return make_test_pki(tmp_path / "pki")


def wait_for_failure(listener: RequestListener) -> tuple[ListenerStats, list[bool]]:
    """Waits for the first stated error; returns the stats and every `connected` seen meanwhile."""
    seen: list[bool] = []

    def failed(stats: ListenerStats) -> bool:
        seen.append(stats.connected)
        return stats.last_error is not None

    assert listener.wait_for(failed, WAIT_S), listener.stats
    return listener.stats, seen


# ---------------------------------------------------------------- TLS


def test_tls_with_the_test_ca_works(tmp_path: Path, pki: TestPKI) -> None:
    collector = Collector()
    with MosquittoBroker(tmp_path / "broker", pki=pki) as broker:
        with listening(make_listener(broker, collector, tls_ca=pki.ca_cert)) as listener:
            with broker.publisher() as pub:  # the publisher uses TLS too
                pub.publish(CELL_TOPIC, b"over TLS")
            assert collector.wait_for_payload(b"over TLS")
            assert listener.stats.last_error is None


def test_tls_with_a_wrong_ca_does_not_connect_and_says_why(tmp_path: Path, pki: TestPKI) -> None:
    stranger = make_test_pki(tmp_path / "other-pki", ca_name="someone else's CA")
    with MosquittoBroker(tmp_path / "broker", pki=pki) as broker:
        with listening(
            make_listener(broker, Collector(), tls_ca=stranger.ca_cert), subscribed=False
        ) as listener:
            stats, seen = wait_for_failure(listener)
    assert not any(seen) and not stats.connected and not stats.subscribed
    assert "certificate verify failed" in (stats.last_error or "")
    assert f"{broker.host}:{broker.port}" in (stats.last_error or "")


def test_tls_without_a_ca_file_trusts_only_the_system_cas(tmp_path: Path, pki: TestPKI) -> None:
    # For a broker with a public certificate; our test CA is in no system store.
    with MosquittoBroker(tmp_path / "broker", pki=pki) as broker:
        with listening(make_listener(broker, Collector(), tls=True), subscribed=False) as listener:
            stats, seen = wait_for_failure(listener)
    assert not any(seen)
    assert "certificate verify failed" in (stats.last_error or "")


def test_client_certificate_when_the_broker_requires_one(tmp_path: Path, pki: TestPKI) -> None:
    with MosquittoBroker(tmp_path / "broker", pki=pki, require_client_cert=True) as broker:
        collector = Collector()
        with_cert = make_listener(
            broker, collector, tls_ca=pki.ca_cert, tls_cert=pki.client_cert, tls_key=pki.client_key
        )
        with listening(with_cert), broker.publisher() as pub:
            pub.publish(CELL_TOPIC, b"mutual TLS")
            assert collector.wait_for_payload(b"mutual TLS")

        without_cert = make_listener(broker, Collector(), client_id="camera-2", tls_ca=pki.ca_cert)
        with listening(without_cert, subscribed=False):
            stats, seen = wait_for_failure(without_cert)
    assert not any(seen) and not stats.connected
    assert "certificate" in (stats.last_error or "").lower()


def test_unreadable_tls_files_are_a_setup_error(tmp_path: Path, pki: TestPKI) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(MqttSetupError, match=r"no-such-ca\.pem.*No such file"):
        RequestListener("localhost", 8883, client_id="c", topics=["t/#"], handler=print,
                        tls_ca=missing)
    with pytest.raises(MqttSetupError, match="cannot be loaded"):
        RequestListener("localhost", 8883, client_id="c", topics=["t/#"], handler=print,
                        tls_ca=pki.ca_cert, tls_cert=pki.client_cert, tls_key=pki.server_key)


# ---------------------------------------------------------------- login


@pytest.fixture
def login_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker", users={"camera": "correct horse"}) as broker:
        yield broker


def test_username_and_password_file(tmp_path: Path, login_broker: MosquittoBroker) -> None:
    password_file = tmp_path / "mqtt-password"
    password_file.write_text("correct horse\n")  # as `echo ... >` writes it
    password_file.chmod(0o600)
    collector = Collector()
    listener = make_listener(
        login_broker, collector, username="camera", password_file=password_file
    )
    with listening(listener), login_broker.publisher() as pub:
        pub.publish(CELL_TOPIC, b"logged in")
        assert collector.wait_for_payload(b"logged in")


def test_wrong_password_is_refused_and_never_marked_connected(
    tmp_path: Path, login_broker: MosquittoBroker
) -> None:
    password_file = tmp_path / "mqtt-password"
    password_file.write_text("battery staple")
    password_file.chmod(0o600)
    listener = make_listener(
        login_broker, Collector(), username="camera", password_file=password_file
    )
    with listening(listener, subscribed=False):
        stats, seen = wait_for_failure(listener)
    assert not any(seen) and not stats.connected
    # mosquitto answers a wrong password with "Not authorized" (MQTT 5 reason 0x87).
    assert "refused the connection: Not authorized" in (stats.last_error or "")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"one\ntwo\n", "one line"),
        (b"\xff\xfe", "not UTF-8"),
        (b"x" * (MAX_PASSWORD_FILE_BYTES + 1), "over 4096 bytes"),
    ],
)
def test_bad_password_files_give_one_clear_line(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content)
    with pytest.raises(MqttSetupError, match=reason) as caught:
        read_password_file(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_password_file_reading(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"s3cret \r\n")
    path.chmod(0o644)
    assert read_password_file(path) == "s3cret "  # only the line end goes
    assert any("chmod 600" in r.getMessage() for r in caplog.records)
    with pytest.raises(MqttSetupError, match="cannot read"):
        read_password_file(tmp_path / "absent")
    with pytest.raises(MqttSetupError, match="cannot read"):
        RequestListener("localhost", 1883, client_id="c", topics=["t/#"], handler=print,
                        username="u", password_file=tmp_path / "absent")


def test_misuse_is_refused_at_construction(tmp_path: Path) -> None:
    def make(**kwargs: object) -> RequestListener:
        arguments: dict = {"client_id": "c", "topics": ["t/#"], "handler": print, **kwargs}
        return RequestListener("localhost", 1883, **arguments)

    with pytest.raises(ValueError, match="needs a username"):
        make(password_file=tmp_path / "pw")
    with pytest.raises(ValueError, match="go together"):
        make(tls_ca=tmp_path / "ca", tls_cert=tmp_path / "cert")
    with pytest.raises(MqttSetupError, match=r"mqtt\.client_id"):
        make(client_id="")
    with pytest.raises(MqttSetupError, match=r"mqtt\.client_id 'my camera'"):
        make(client_id="my camera")
    with pytest.raises(ValueError, match="topic"):
        make(topics=[])
    with pytest.raises(ValueError, match="needs TLS"):
        make(tls_cert=tmp_path / "cert", tls_key=tmp_path / "key")


def test_client_id_is_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "mqtt-client-id"
    first = load_or_create_client_id(path)
    assert first.startswith("edge-") and len(first) == 21
    assert load_or_create_client_id(path) == first  # same session after a restart
    assert load_or_create_client_id(tmp_path / "elsewhere") != first  # random, not derived
    path.write_text("not valid!\n")
    with pytest.raises(MqttSetupError, match="not hold a valid MQTT client id"):
        load_or_create_client_id(path)


def test_subscriptions_below_qos_1_are_not_reported_as_listening(tmp_path: Path) -> None:
    # A broker that grants only QoS 0 keeps nothing for an offline camera:
    # connected, but not listening the way the spec needs, and said so.
    with MosquittoBroker(tmp_path / "broker", extra_config=["max_qos 0"]) as broker:
        listener = make_listener(broker, Collector())
        with listening(listener, subscribed=False):
            stats, _ = wait_for_failure(listener)
    assert stats.connected and not stats.subscribed
    assert "did not grant QoS 1" in (stats.last_error or "")
    assert "edge/v1/req/c/2/3/n/b/# (Granted QoS 0)" in (stats.last_error or "")
