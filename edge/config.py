"""The config: read once at start, every key validated, unknown keys rejected by name.

A mistake in the config is a ``ConfigError`` carrying one line a person can act
on (``buffer.max_bytes: "8 gigs" is not a size``); the CLI prints it and exits 2.
"""

from __future__ import annotations

import base64
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge.units import parse_duration_s, parse_size_bytes

DEFAULT_CONFIG_PATH = Path("/etc/edge/edge.toml")
MAX_CONFIG_BYTES = 256 * 1024


class ConfigError(Exception):
    """A config mistake, described in one line."""


# ---------------------------------------------------------------------------
# Field parsers: each takes the raw TOML value and returns the typed one, or
# raises ValueError with the reason (the loader adds the key's name).


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_kind(value)}")
    return value


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {_kind(value)}")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range ({low} to {high})")
        return value

    return parse


def _float_in(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_kind(value)}")
        number = float(value)
        if not math.isfinite(number) or not low <= number <= high:
            raise ValueError(f"{value} is out of range ({low:g} to {high:g})")
        return number

    return parse


def _size_in(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        size = parse_size_bytes(value)
        if not low <= size <= high:
            raise ValueError(f"{value!r} is out of range ({low} to {high} bytes)")
        return size

    return parse


def _duration_in(low_s: float, high_s: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        duration_s = parse_duration_s(value)
        if not low_s <= duration_s <= high_s:
            raise ValueError(f"{value!r} is out of range ({low_s:g} s to {high_s:g} s)")
        return duration_s

    return parse


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _string(value)
        if text not in allowed:
            raise ValueError(f"{text!r} is not one of: {', '.join(allowed)}")
        return text

    return parse


def _path(value: Any) -> Path:
    text = _string(value)
    if not text or "\x00" in text:
        raise ValueError("expected a file path")
    return Path(text).expanduser()


def _optional_path(value: Any) -> Path | None:
    text = _string(value)
    return _path(text) if text else None


def _url(*schemes: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _string(value)
        if text == "":
            return ""
        if not any(text.startswith(f"{scheme}://") for scheme in schemes) or len(text) > 2048:
            raise ValueError(f"{text!r} is not a URL starting with {' or '.join(schemes)}://")
        return text

    return parse


def _listen_address(value: Any) -> str:
    text = _string(value)
    if text == "":
        return ""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f'{text!r} is not HOST:PORT (example: "0.0.0.0:8420")')
    return text


def _platform_keys(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of base64url keys, got {_kind(value)}")
    keys = []
    for position, item in enumerate(value):
        if not isinstance(item, str) or not re.fullmatch(r"[A-Za-z0-9_-]{43}", item):
            raise ValueError(f"item {position} is not a base64url Ed25519 public key (43 chars)")
        raw = base64.urlsafe_b64decode(item + "=")
        if len(raw) != 32:
            raise ValueError(f"item {position} does not decode to 32 bytes")
        keys.append(raw)
    return tuple(keys)


_AGE_RECIPIENT_RE = re.compile(r"age1[02-9ac-hj-np-z]{58}")


def _age_recipients(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of age recipients, got {_kind(value)}")
    recipients = []
    for position, item in enumerate(value):
        if not isinstance(item, str) or not _AGE_RECIPIENT_RE.fullmatch(item):
            raise ValueError(
                f'item {position} is not an age X25519 recipient ("age1" and 58 characters; '
                "make one with age-keygen)"
            )
        recipients.append(item)
    return tuple(recipients)


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _setting(default: Any, parse: Callable[[Any], Any]) -> Any:
    return field(default=default, metadata={"parse": parse})


# ---------------------------------------------------------------------------
# Sections. Defaults here are the documented ones (config/edge.toml).


@dataclass(frozen=True)
class DeviceConfig:
    data_dir: Path = _setting(Path("/var/lib/edge"), _path)
    name: str = _setting("doorbell", _string)
    latitude: float | None = _setting(None, _float_in(-90.0, 90.0))
    longitude: float | None = _setting(None, _float_in(-180.0, 180.0))
    timezone: str = _setting("", _string)  # "" = the system's


@dataclass(frozen=True)
class CameraConfig:
    source: str = _setting("virtual", _choice("virtual", "picamera2", "opencv"))
    width: int = _setting(1280, _int_in(320, 3840))
    height: int = _setting(720, _int_in(180, 2160))
    fps: int = _setting(30, _int_in(1, 60))
    device: str = _setting("0", _string)  # opencv: index, /dev/videoN, file or RTSP URL
    file: Path | None = _setting(None, _optional_path)  # virtual: a recording to replay
    encoder: str = _setting("auto", _choice("auto", "libx264", "h264_v4l2m2m"))
    crf: int = _setting(23, _int_in(0, 51))
    bitrate: int = _setting(0, _int_in(0, 100_000_000))  # bits/s; 0 = constant quality (crf)


@dataclass(frozen=True)
class BufferConfig:
    max_bytes: int = _setting(8 * 1024**3, _size_in(16 * 1024**2, 2**50))
    max_age_s: float = _setting(72 * 3600.0, _duration_in(60, 366 * 86400))
    segment_seconds: int = _setting(2, _int_in(1, 10))
    key_rotation_s: float = _setting(86400.0, _duration_in(600, 30 * 86400))
    pin_cap_bytes: int = _setting(0, _size_in(0, 2**50))  # 0 = a quarter of max_bytes

    @property
    def effective_pin_cap_bytes(self) -> int:
        return self.pin_cap_bytes or self.max_bytes // 4


@dataclass(frozen=True)
class MqttConfig:
    host: str = _setting("localhost", _string)  # "" = do not listen for requests
    port: int = _setting(1883, _int_in(1, 65535))
    topic_prefix: str = _setting("edge", _string)
    geohash_precision: int = _setting(5, _int_in(2, 8))
    client_id: str = _setting("", _string)  # "" = a stable random id kept in data_dir
    username: str = _setting("", _string)
    password_file: Path | None = _setting(None, _optional_path)
    tls: bool = _setting(False, _bool)  # TLS checked against the system's CAs (or tls_ca)
    tls_ca: Path | None = _setting(None, _optional_path)
    tls_cert: Path | None = _setting(None, _optional_path)
    tls_key: Path | None = _setting(None, _optional_path)


@dataclass(frozen=True)
class TrustConfig:
    platform_keys: tuple[bytes, ...] = _setting((), _platform_keys)


@dataclass(frozen=True)
class PolicyConfig:
    max_window_s: float = _setting(12 * 3600.0, _duration_in(1, 7 * 86400))
    max_radius_m: float = _setting(650.0, _float_in(1, 100_000))
    decision_timeout_s: float = _setting(48 * 3600.0, _duration_in(60, 30 * 86400))
    unsynced_footage: str = _setting("exclude", _choice("exclude", "warn"))


@dataclass(frozen=True)
class KeysConfig:
    dir: Path | None = _setting(None, _optional_path)  # None = data_dir/keys
    owner_recipients: tuple[str, ...] = _setting((), _age_recipients)


@dataclass(frozen=True)
class NotifyConfig:
    ntfy_url: str = _setting("", _url("https", "http"))
    ntfy_token_file: Path | None = _setting(None, _optional_path)
    webhook_url: str = _setting("", _url("https", "http"))
    console: bool = _setting(False, _bool)


@dataclass(frozen=True)
class ReviewConfig:
    listen: str = _setting("", _listen_address)
    url: str = _setting("", _url("https", "http"))
    tls_cert: Path | None = _setting(None, _optional_path)
    tls_key: Path | None = _setting(None, _optional_path)


@dataclass(frozen=True)
class UploadConfig:
    allow_insecure_localhost: bool = _setting(False, _bool)


# TOML key -> dataclass field, where the field's name carries a unit the key does not.
_RENAMED = {
    ("buffer", "max_age"): "max_age_s",
    ("buffer", "key_rotation"): "key_rotation_s",
    ("buffer", "pin_cap"): "pin_cap_bytes",
    ("policy", "max_window"): "max_window_s",
    ("policy", "decision_timeout"): "decision_timeout_s",
}


@dataclass(frozen=True)
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    source_path: Path | None = None

    @property
    def keys_dir(self) -> Path:
        return self.keys.dir if self.keys.dir is not None else self.device.data_dir / "keys"

    @property
    def location_known(self) -> bool:
        return self.device.latitude is not None and self.device.longitude is not None


_SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in fields(Config)
    if f.name != "source_path"
}


def _parse_section(name: str, raw: Any) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table, got {_kind(raw)}")
    by_key = {f.name: f for f in fields(cls)}
    for (section, key), field_name in _RENAMED.items():
        if section == name:
            by_key[key] = by_key.pop(field_name)
    values = {}
    for key, value in raw.items():
        spec = by_key.get(key)
        if spec is None:
            known = ", ".join(sorted(by_key))
            raise ConfigError(f"unknown key {name}.{key} (known keys in [{name}]: {known})")
        try:
            values[spec.name] = spec.metadata["parse"](value)
        except ValueError as exc:
            raise ConfigError(f"{name}.{key}: {exc}") from None
    return cls(**values)


def _check_across_fields(config: Config) -> None:
    """Rules that involve more than one key, in one place."""
    device, mqtt, review, notify = config.device, config.mqtt, config.review, config.notify
    if (device.latitude is None) != (device.longitude is None):
        raise ConfigError("device.latitude and device.longitude must be set together")
    if (mqtt.tls_cert is None) != (mqtt.tls_key is None):
        raise ConfigError("mqtt.tls_cert and mqtt.tls_key must be set together")
    if mqtt.password_file is not None and not mqtt.username:
        raise ConfigError("mqtt.password_file is set but mqtt.username is empty")
    if (review.tls_cert is None) != (review.tls_key is None):
        raise ConfigError("review.tls_cert and review.tls_key must be set together")
    if notify.ntfy_token_file is not None and not notify.ntfy_url:
        raise ConfigError("notify.ntfy_token_file is set but notify.ntfy_url is empty")
    if notify.ntfy_url and notify.ntfy_url.rstrip("/").count("/") < 3:
        raise ConfigError(
            "notify.ntfy_url must name a server and a topic, e.g. "
            '"https://ntfy.example.org/porch-7f3a"'
        )
    if config.camera.width % 2 or config.camera.height % 2:
        raise ConfigError("camera.width and camera.height must be even (H.264 4:2:0)")
    if device.timezone:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(device.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"device.timezone: {device.timezone!r} is not a known time zone "
                '(example: "Europe/Berlin")'
            ) from None
    if mqtt.client_id and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", mqtt.client_id):
        raise ConfigError("mqtt.client_id: use 1 to 64 letters, digits, '.', '-' or '_'")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", mqtt.topic_prefix):
        raise ConfigError("mqtt.topic_prefix: use 1 to 64 letters, digits, '-' or '_'")


def parse_config(text: str, source_path: Path | None = None) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    sections = {}
    for name, value in raw.items():
        if name not in _SECTIONS:
            raise ConfigError(f"unknown section [{name}] (known: {', '.join(sorted(_SECTIONS))})")
        sections[name] = _parse_section(name, value)
    config = Config(**sections, source_path=source_path)
    _check_across_fields(config)
    return config


def default_config_path() -> Path:
    from_env = os.environ.get("EDGE_CONFIG")
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def load_config(path: Path | None = None) -> Config:
    """Read and validate the config at ``path`` (default ``$EDGE_CONFIG``, then /etc/edge)."""
    path = path if path is not None else default_config_path()
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file (copy config/edge.toml there)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        return parse_config(text, source_path=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
