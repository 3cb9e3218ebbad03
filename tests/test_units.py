import pytest

from edge.units import (
    format_rfc3339_ms,
    parse_duration_s,
    parse_rfc3339_ms,
    parse_size_bytes,
    parse_time_ms,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GiB", 8 * 1024**3),
        ("500MB", 500_000_000),
        ("1.5KiB", 1536),
        (1048576, 1048576),
        ("12", 12),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size_bytes(text) == expected


@pytest.mark.parametrize("text", ["8 gigs", "", "-1", -5, True, 1.5, "GiB"])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size_bytes(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("72h", 259200.0), ("90s", 90.0), ("2d", 172800.0), (30, 30.0), ("1.5m", 90.0)],
)
def test_durations(text: object, expected: float) -> None:
    assert parse_duration_s(text) == expected


@pytest.mark.parametrize("text", ["72 hours", "h", "-3h", [], False])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text)


def test_rfc3339_offsets_fractions_and_case() -> None:
    utc = parse_rfc3339_ms("2026-11-28T14:05:00Z")
    assert parse_rfc3339_ms("2026-11-28t15:05:00+01:00") == utc
    assert parse_rfc3339_ms("2026-11-28T09:05:00.250-05:00") == utc + 250
    assert parse_rfc3339_ms("2026-11-28T14:05:00z") == utc
    assert format_rfc3339_ms(utc) == "2026-11-28T14:05:00Z"
    assert format_rfc3339_ms(utc + 7) == "2026-11-28T14:05:00.007Z"


@pytest.mark.parametrize(
    "text",
    ["2026-11-28T14:05:00", "2026-11-28", "2026-13-01T00:00:00Z", "yesterday", "2026-11-28T14:05Z"],
)
def test_rfc3339_rejects_missing_offset_and_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339_ms(text)


def test_relative_times() -> None:
    now_ms = 1_800_000_000_000
    assert parse_time_ms("-10m", now_ms) == now_ms - 600_000
    assert parse_time_ms("-30s", now_ms) == now_ms - 30_000
    assert parse_time_ms("-2h", now_ms) == now_ms - 7_200_000
    assert parse_time_ms("now", now_ms) == now_ms
