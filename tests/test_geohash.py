"""Geohash cells and the camera's subscription topics (assist-request-v1, Transport)."""

from __future__ import annotations

import pytest

from edge.share.geohash import BASE32, encode, request_topic, subscription_topics


@pytest.mark.parametrize(
    ("lat", "lon", "expected"),
    [
        (47.6062, -122.3321, "c23nb62q"),  # the vectors' camera
        (57.64911, 10.40744, "u4pruydqqvj"),  # Wikipedia's example
        (39.92816697, 116.38954991, "wx4g0s8q3jf9"),
        (-90, -180, "000000"),
        (90, 180, "zzzzzz"),
    ],
)
def test_encode_known_cells(lat: float, lon: float, expected: str) -> None:
    assert encode(lat, lon, len(expected)) == expected


def _cell_box(cell: str) -> tuple[float, float, float, float]:
    """Decodes a cell to (west, south, east, north), bit by bit, independently of encode."""
    west, south, east, north = -180.0, -90.0, 180.0, 90.0
    bits = "".join(f"{BASE32.index(c):05b}" for c in cell)
    for i, bit in enumerate(bits):
        if i % 2 == 0:
            mid = (west + east) / 2
            west, east = (mid, east) if bit == "1" else (west, mid)
        else:
            mid = (south + north) / 2
            south, north = (mid, north) if bit == "1" else (south, mid)
    return west, south, east, north


def test_the_cell_contains_the_point_everywhere() -> None:
    import random

    rng = random.Random(3)
    points = [(-16.5, 179.9999), (0.0, 0.0), (-0.0001, -0.0001), (89.99, -179.99)]
    points += [(rng.uniform(-90, 90), rng.uniform(-180, 180)) for _ in range(500)]
    for lat, lon in points:
        for n in (1, 5, 8):
            west, south, east, north = _cell_box(encode(lat, lon, n))
            assert west <= lon <= east and south <= lat <= north, (lat, lon, n)


def test_encode_prefixes_are_the_coarser_cells() -> None:
    full = encode(47.6062, -122.3321, 12)
    assert all(encode(47.6062, -122.3321, n) == full[:n] for n in range(1, 13))


def test_the_spec_example_topics_for_precision_5() -> None:
    assert subscription_topics(47.6062, -122.3321, 5) == [
        "edge/v1/req/c",
        "edge/v1/req/c/2",
        "edge/v1/req/c/2/3",
        "edge/v1/req/c/2/3/n",
        "edge/v1/req/c/2/3/n/b/#",
    ]
    assert subscription_topics(47.6062, -122.3321, 2, prefix="city/test") == [
        "city/test/v1/req/c",
        "city/test/v1/req/c/2/#",
    ]


def _matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 topic matching (section 4.7): '#' also matches the parent level."""
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


@pytest.mark.parametrize("precision", [2, 5, 8])
def test_every_cell_containing_or_inside_the_camera_cell_matches_exactly_one_filter(
    precision: int,
) -> None:
    filters = subscription_topics(47.6062, -122.3321, precision)
    d = encode(47.6062, -122.3321, 8)
    for n in range(1, 9):
        topic = request_topic("edge", d[:n])
        assert sum(_matches(f, topic) for f in filters) == 1, topic
    # Cells beside the camera's own, at its precision or finer, match nothing.
    sibling = d[: precision - 1] + ("0" if d[precision - 1] != "0" else "1")
    for n in range(precision, 9):
        topic = request_topic("edge", (sibling + "zzzzzzzz")[:n])
        assert not any(_matches(f, topic) for f in filters), topic


@pytest.mark.parametrize("precision", [0, 1, 9])
def test_precision_outside_2_to_8_is_refused(precision: int) -> None:
    with pytest.raises(ValueError, match="precision"):
        subscription_topics(47.6, -122.3, precision)


@pytest.mark.parametrize("prefix", ["", "a/+", "a/#", "a//b", "/a", "a/"])
def test_a_prefix_with_wildcards_or_empty_levels_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        subscription_topics(47.6, -122.3, 5, prefix=prefix)


def test_cells_and_positions_are_checked() -> None:
    for cell in ("", "a", "c23nb62q0", "C2"):
        with pytest.raises(ValueError):
            request_topic("edge", cell)
    with pytest.raises(ValueError):
        encode(91, 0, 5)
