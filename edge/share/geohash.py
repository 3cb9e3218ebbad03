"""Geohash cells and the MQTT topics a camera subscribes to (assist-request-v1).

Our own lines: a geohash is twenty lines of bit interleaving (Niemeyer's public
domain scheme), and the topic list follows the spec's wording exactly; a
library would add a dependency for less than this file.
"""

from __future__ import annotations

BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"  # the geohash alphabet (no a, i, l, o)
MIN_PRECISION, MAX_PRECISION = 2, 8  # the spec's range for the subscription precision
MAX_CELL_LENGTH = 8  # publishers use cells of 1 to 8 characters


def encode(lat: float, lon: float, length: int) -> str:
    """The standard base32 geohash of (lat, lon), ``length`` characters. Bits
    alternate longitude, latitude, starting with longitude; a point on a cell's
    dividing line belongs to the upper (north or east) cell, as everywhere."""
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"position out of range: lat {lat}, lon {lon}")
    if not 1 <= length <= 12:
        raise ValueError(f"geohash length {length} outside 1..12")
    lat_lo, lat_hi = -90.0, 90.0
    lon_lo, lon_hi = -180.0, 180.0
    chars: list[str] = []
    bits = value = 0
    even = True  # longitude first
    while len(chars) < length:
        if even:
            mid = (lon_lo + lon_hi) / 2
            bit = lon >= mid
            lon_lo, lon_hi = (mid, lon_hi) if bit else (lon_lo, mid)
        else:
            mid = (lat_lo + lat_hi) / 2
            bit = lat >= mid
            lat_lo, lat_hi = (mid, lat_hi) if bit else (lat_lo, mid)
        value = (value << 1) | bit
        bits += 1
        even = not even
        if bits == 5:
            chars.append(BASE32[value])
            bits = value = 0
    return "".join(chars)


def request_topic(prefix: str, cell: str) -> str:
    """The topic a publisher uses for a cell: ``{prefix}/v1/req/{g1}/…/{gn}``."""
    _check_prefix(prefix)
    if not 1 <= len(cell) <= MAX_CELL_LENGTH or any(c not in BASE32 for c in cell):
        raise ValueError(f"not a geohash cell of 1..{MAX_CELL_LENGTH} characters: {cell!r}")
    return f"{prefix}/v1/req/" + "/".join(cell)


def subscription_topics(lat: float, lon: float, precision: int, prefix: str = "edge") -> list[str]:
    """The topic filters a camera at (lat, lon) subscribes to: the exact topics of
    the coarser cells ``d[:1] … d[:k-1]``, then ``…/d[k-1]/#`` (in MQTT, ``x/#``
    also matches ``x`` itself, so the camera's own k-cell is covered by it). The
    filters are disjoint, so a request published once per cell arrives once."""
    if not MIN_PRECISION <= precision <= MAX_PRECISION:
        raise ValueError(
            f"geohash precision {precision} outside {MIN_PRECISION}..{MAX_PRECISION}"
        )
    cell = encode(lat, lon, precision)
    topics = [request_topic(prefix, cell[:n]) for n in range(1, precision)]
    topics.append(request_topic(prefix, cell) + "/#")
    return topics


def _check_prefix(prefix: str) -> None:
    # A wildcard or an empty level in the prefix would subscribe to other people's topics.
    if not prefix or any(ch in prefix for ch in "+#\0") or "" in prefix.split("/"):
        raise ValueError(f"bad MQTT topic prefix {prefix!r}")
