"""Parsing of the sizes, durations and times people write in the config and on the CLI."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")

_DURATION_UNITS_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_RELATIVE_RE = re.compile(r"^-(\d+(?:\.\d+)?)([smhdw])$")

# RFC 3339 date-time with a mandatory offset; fractional seconds optional; T/Z in either case.
_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_size_bytes(value: object) -> int:
    """``"8GiB"``, ``"500MB"`` or a whole number of bytes."""
    if isinstance(value, bool):
        raise ValueError('expected a size such as "8GiB", "500MB" or a number of bytes')
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError('expected a size such as "8GiB", "500MB" or a number of bytes')
    match = _SIZE_RE.match(value)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f'{value!r} is not a size (examples: "8GiB", "500MB", 1048576)')
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration_s(value: object) -> float:
    """``"72h"``, ``"90s"``, ``"2d"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "72h", "90s", "2d" or seconds')
    if isinstance(value, int | float):
        if value < 0 or value != value:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError('expected a duration such as "72h", "90s", "2d" or seconds')
    match = _DURATION_RE.match(value)
    if match is None:
        raise ValueError(f'{value!r} is not a duration (examples: "72h", "90s", "2d", 30)')
    return float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]


def parse_rfc3339_ms(text: str) -> int:
    """An RFC 3339 date-time with its offset, as ms since the Unix epoch."""
    match = _RFC3339_RE.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not an RFC 3339 time with an offset (example: 2026-11-28T14:05:00Z)"
        )
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = match.group(7) or ""
    offset = match.group(8).upper()
    if second == 60:  # a leap second: RFC 3339 allows it; count it as the next second's start
        second = 59
        leap_ms = 1000
    else:
        leap_ms = 0
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date-time: {exc}") from None
    offset_s = 0
    if offset != "Z":
        sign = 1 if offset[0] == "+" else -1
        off_h, off_m = int(offset[1:3]), int(offset[4:6])
        if off_h > 23 or off_m > 59:
            raise ValueError(f"{text!r} has an invalid offset")
        offset_s = sign * (off_h * 3600 + off_m * 60)
    fraction_ms = int((fraction[1:] + "000")[:3]) if fraction else 0
    return int(moment.timestamp()) * 1000 - offset_s * 1000 + fraction_ms + leap_ms


def parse_time_ms(text: str, now_ms: int) -> int:
    """A CLI time: RFC 3339 with an offset, ``now``, or relative to now (``-10m``)."""
    text = text.strip()
    if text == "now":
        return now_ms
    match = _RELATIVE_RE.match(text)
    if match:
        return now_ms - int(float(match.group(1)) * _DURATION_UNITS_S[match.group(2)] * 1000)
    return parse_rfc3339_ms(text)


def format_rfc3339_ms(timestamp_ms: int) -> str:
    """``2026-11-28T14:05:00.250Z``; milliseconds only when there are some."""
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    if timestamp_ms % 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{timestamp_ms % 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_bytes(size_bytes: int) -> str:
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
