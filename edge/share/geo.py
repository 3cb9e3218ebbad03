"""Geometry for assistance requests: distances, point-in-polygon, simplicity, areas.

Our own few lines rather than shapely/pyproj/geographiclib, because:

- the spec fixes the model exactly: a sphere of radius 6,371,008.8 m, polygon
  edges straight in longitude and latitude (RFC 7946), a point on a boundary
  inside. Shapely is planar and its boundary rules are configurable per call;
  geographiclib works on the WGS84 ellipsoid with geodesic edges. Either would
  be a different model that agrees only approximately, then needs glue anyway;
- the polygons are tiny (at most 256 positions) and the operations four;
- a Pi Zero has 512 MB: shapely brings GEOS (about 10 MB of shared libraries
  and a few MB of RSS) for what is here about 200 lines of pure Python.

Robustness: orientation tests (``_orient``) use a floating-point filter with
an exact rational fallback (Shewchuk's error bound, then ``fractions``), so a
point exactly on an edge is on it, and a polygon whose edges only just touch is
caught as not simple, whatever the rounding.

Areas are exact for the spec's model: along an edge straight in (lon, lat),
latitude is linear in longitude, so Green's theorem on the sphere's area
element R² cos(lat) dlat dlon gives each edge a closed form (``ring_area_m2``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, NamedTuple

EARTH_RADIUS_M = 6_371_008.8  # the spec's sphere (the IUGG mean radius)


class LonLat(NamedTuple):
    """A position in degrees, in GeoJSON's order."""

    lon: float
    lat: float


Ring = Sequence[LonLat]  # closed: the last position repeats the first


# --- distance ----------------------------------------------------------------


def distance_m(a: LonLat, b: LonLat) -> float:
    """Great-circle distance on the spec's sphere (haversine: well-conditioned at
    the short distances that matter here)."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat = lat2 - lat1
    dlon = math.radians(b.lon - a.lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


# --- exact-enough predicates -------------------------------------------------

# Shewchuk's ccwerrboundA: past this, the sign of the float determinant is right.
_ORIENT_ERRBOUND = (3.0 + 16.0 * 2.0**-53) * 2.0**-53


def _orient(a: LonLat, b: LonLat, c: LonLat) -> int:
    """Sign of the cross product (b - a) x (c - a): 1 if c is left of a->b
    (counter-clockwise), -1 if right, 0 if exactly collinear."""
    left = (a.lon - c.lon) * (b.lat - c.lat)
    right = (a.lat - c.lat) * (b.lon - c.lon)
    det = left - right
    if abs(det) > _ORIENT_ERRBOUND * (abs(left) + abs(right)):
        return 1 if det > 0 else -1
    # Too close to call in floats: decide exactly (every float is a rational).
    ax, ay, bx, by, cx, cy = (Fraction(v) for v in (a.lon, a.lat, b.lon, b.lat, c.lon, c.lat))
    exact = (ax - cx) * (by - cy) - (ay - cy) * (bx - cx)
    return (exact > 0) - (exact < 0)


def _within_box(p: LonLat, a: LonLat, b: LonLat) -> bool:
    return min(a.lon, b.lon) <= p.lon <= max(a.lon, b.lon) and min(a.lat, b.lat) <= p.lat <= max(
        a.lat, b.lat
    )


def _on_segment(p: LonLat, a: LonLat, b: LonLat) -> bool:
    return _within_box(p, a, b) and _orient(a, b, p) == 0


def segments_intersect(p1: LonLat, p2: LonLat, q1: LonLat, q2: LonLat) -> bool:
    """Whether closed segments p1-p2 and q1-q2 share at least one point."""
    d1, d2 = _orient(q1, q2, p1), _orient(q1, q2, p2)
    d3, d4 = _orient(p1, p2, q1), _orient(p1, p2, q2)
    if d1 * d2 < 0 and d3 * d4 < 0:
        return True
    return (
        (d1 == 0 and _within_box(p1, q1, q2))
        or (d2 == 0 and _within_box(p2, q1, q2))
        or (d3 == 0 and _within_box(q1, p1, p2))
        or (d4 == 0 and _within_box(q2, p1, p2))
    )


# --- point in polygon --------------------------------------------------------

OUTSIDE, BOUNDARY, INSIDE = -1, 0, 1


def ring_locate(ring: Ring, p: LonLat, edges: Iterable[int] | None = None) -> int:
    """Where p lies against a closed ring: ``INSIDE``, ``BOUNDARY`` or ``OUTSIDE``
    (even-odd rule, so it is defined for any ring, simple or not). ``edges``, if
    given, are the start indices of the only edges that can reach p's latitude
    (from ``LatitudeBands``); the others cannot change the answer."""
    inside = False
    for i in range(len(ring) - 1) if edges is None else edges:
        a, b = ring[i], ring[i + 1]
        if (a.lat > p.lat) != (b.lat > p.lat):
            # The edge straddles p's latitude; is the crossing to p's right?
            side = _orient(a, b, p)
            if side == 0:
                return BOUNDARY
            if (side > 0) == (b.lat > a.lat):
                inside = not inside
        elif _on_segment(p, a, b):  # horizontal edges and endpoints
            return BOUNDARY
    return INSIDE if inside else OUTSIDE


class LatitudeBands:
    """A ring's edges bucketed by latitude band, so that a point test on a big
    ring (a jurisdiction of thousands of positions) reads only the edges that
    can straddle or touch the point's latitude."""

    MAX_ENTRIES_PER_EDGE = 16  # past this (edges spanning most bands) an index does not pay

    def __init__(self, ring: Ring) -> None:
        self.south = min(p.lat for p in ring)
        north = max(p.lat for p in ring)
        edge_count = len(ring) - 1
        self.count = max(1, min(edge_count // 4, 256))
        self.height = (north - self.south) / self.count or 1.0
        self.bands: list[list[int]] | None = [[] for _ in range(self.count)]
        entries = 0
        for i in range(edge_count):
            a, b = ring[i].lat, ring[i + 1].lat
            first, last = self._band(min(a, b)), self._band(max(a, b))
            entries += last - first + 1
            if entries > self.MAX_ENTRIES_PER_EDGE * edge_count:
                self.bands = None
                return
            for band in range(first, last + 1):
                self.bands[band].append(i)

    def _band(self, lat: float) -> int:
        # Monotonic in lat, so an edge from lat1 to lat2 is listed in every band
        # that a latitude between them falls in.
        return min(self.count - 1, max(0, int((lat - self.south) / self.height)))

    def edges_near(self, lat: float) -> list[int] | None:
        """Start indices of the edges that may reach ``lat``; None means all."""
        return None if self.bands is None else self.bands[self._band(lat)]


_INDEX_FROM_POSITIONS = 64  # smaller rings are read whole: an index costs more than it saves


@dataclass(frozen=True)
class Polygon:
    """A GeoJSON polygon: the outer ring, then holes. A point on any boundary is
    inside (a point on a hole's boundary too); a point strictly in a hole is not."""

    rings: tuple[tuple[LonLat, ...], ...]
    _box: tuple[float, float, float, float] = field(init=False, repr=False, compare=False)
    _bands: tuple[LatitudeBands | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.rings:
            raise ValueError("a polygon needs an outer ring")
        outer = self.rings[0]
        box = (
            min(p.lon for p in outer),
            min(p.lat for p in outer),
            max(p.lon for p in outer),
            max(p.lat for p in outer),
        )
        object.__setattr__(self, "_box", box)
        bands = tuple(
            LatitudeBands(ring) if len(ring) > _INDEX_FROM_POSITIONS else None
            for ring in self.rings
        )
        object.__setattr__(self, "_bands", bands)

    def _locate(self, index: int, p: LonLat) -> int:
        bands = self._bands[index]
        edges = bands.edges_near(p.lat) if bands is not None else None
        return ring_locate(self.rings[index], p, edges)

    def contains(self, p: LonLat) -> bool:
        west, south, east, north = self._box
        if not (west <= p.lon <= east and south <= p.lat <= north):
            return False  # most tests end here: jurisdictions are large, areas small
        if self._locate(0, p) == OUTSIDE:
            return False
        return all(self._locate(i, p) != INSIDE for i in range(1, len(self.rings)))


@dataclass(frozen=True)
class MultiPolygon:
    """A GeoJSON Polygon or MultiPolygon (a Polygon is a MultiPolygon of one)."""

    polygons: tuple[Polygon, ...]

    def contains(self, p: LonLat) -> bool:
        return any(polygon.contains(p) for polygon in self.polygons)


# --- ring shape --------------------------------------------------------------


def crosses_antimeridian(ring: Ring) -> bool:
    """Whether an edge spans more than 180 degrees of longitude: a publisher who
    meant the short way across ±180 (RFC 7946 says to split such shapes; with
    edges straight in longitude the ring would otherwise wrap the globe)."""
    return any(abs(ring[i + 1].lon - ring[i].lon) > 180 for i in range(len(ring) - 1))


def _distinct_vertices(ring: Ring) -> list[LonLat]:
    """The ring without its closing position and without consecutive repeats
    (a repeated position adds no edge, so it cannot make a ring non-simple)."""
    vertices: list[LonLat] = []
    for p in ring[:-1]:
        if not vertices or p != vertices[-1]:
            vertices.append(p)
    while len(vertices) > 1 and vertices[-1] == vertices[0]:
        vertices.pop()
    return vertices


def _backtracks(a: LonLat, b: LonLat, c: LonLat) -> bool:
    """For consecutive edges a-b, b-c: does b-c run back over a-b (collinear, c on
    a's side of b)? Signs of coordinate differences are exact in floats."""
    if _orient(a, b, c) != 0:
        return False
    same_lon = (a.lon > b.lon and c.lon > b.lon) or (a.lon < b.lon and c.lon < b.lon)
    same_lat = (a.lat > b.lat and c.lat > b.lat) or (a.lat < b.lat and c.lat < b.lat)
    return same_lon or same_lat


def ring_is_simple(ring: Ring) -> bool:
    """Whether a closed ring is simple: at least three distinct vertices, no two
    edges meeting except consecutive ones at their shared vertex. Edges are
    swept in longitude order so far-apart edges are never compared."""
    vertices = _distinct_vertices(ring)
    n = len(vertices)
    if n < 3:
        return False
    edges = [(vertices[i], vertices[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        if _backtracks(edges[i][0], edges[i][1], edges[(i + 1) % n][1]):
            return False
    order = sorted(range(n), key=lambda i: min(edges[i][0].lon, edges[i][1].lon))
    for position, i in enumerate(order):
        a, b = edges[i]
        east = max(a.lon, b.lon)
        south, north = min(a.lat, b.lat), max(a.lat, b.lat)
        for j in order[position + 1 :]:
            c, d = edges[j]
            if min(c.lon, d.lon) > east:
                break
            if max(c.lat, d.lat) < south or min(c.lat, d.lat) > north:
                continue
            if abs(i - j) in (1, n - 1):
                continue  # consecutive: they share a vertex; overlap is _backtracks' job
            if segments_intersect(a, b, c, d):
                return False
    return True


def ring_area_m2(ring: Ring) -> float:
    """Area on the spec's sphere of a simple closed ring whose edges are straight
    in (lon, lat). Exact in closed form: along an edge lat is linear in lon, and
    the integral of sin(lat) dlon over it is dlon * sin(mid-lat) * sinc(dlat / 2)."""
    total = 0.0
    for i in range(len(ring) - 1):
        lat1, lat2 = math.radians(ring[i].lat), math.radians(ring[i + 1].lat)
        dlon = math.radians(ring[i + 1].lon - ring[i].lon)
        half_dlat = (lat2 - lat1) / 2
        sinc = math.sin(half_dlat) / half_dlat if half_dlat else 1.0
        total += dlon * math.sin((lat1 + lat2) / 2) * sinc
    return abs(total) * EARTH_RADIUS_M**2


def ring_centroid(ring: Ring) -> LonLat:
    """Centroid of a simple ring in the (lon, lat) plane: at request sizes
    (hundreds of metres) as good as any spherical centre, and always a point a
    person would call the middle of the area."""
    origin = ring[0]  # relative coordinates keep the shoelace sums well-conditioned
    twice_area = cx = cy = 0.0
    for i in range(len(ring) - 1):
        x1, y1 = ring[i].lon - origin.lon, ring[i].lat - origin.lat
        x2, y2 = ring[i + 1].lon - origin.lon, ring[i + 1].lat - origin.lat
        cross = x1 * y2 - x2 * y1
        twice_area += cross
        cx += (x1 + x2) * cross
        cy += (y1 + y2) * cross
    if twice_area == 0:  # degenerate: fall back to the mean vertex
        n = len(ring) - 1
        return LonLat(
            sum(p.lon for p in ring[:-1]) / n,
            sum(p.lat for p in ring[:-1]) / n,
        )
    return LonLat(origin.lon + cx / (3 * twice_area), origin.lat + cy / (3 * twice_area))


# --- request areas -----------------------------------------------------------


@dataclass(frozen=True)
class CircleArea:
    """``{"type": "Point", "coordinates": [lon, lat], "radius_m": R}``."""

    centre: LonLat
    radius_m: float

    def contains(self, p: LonLat) -> bool:
        return distance_m(self.centre, p) <= self.radius_m

    @property
    def area_m2(self) -> float:
        return math.pi * self.radius_m**2

    @property
    def vertices(self) -> tuple[LonLat, ...]:
        """The points the jurisdiction test looks at: the centre alone."""
        return (self.centre,)

    def to_geojson(self) -> dict[str, Any]:
        return {"type": "Point", "coordinates": [self.centre.lon, self.centre.lat],
                "radius_m": self.radius_m}


@dataclass(frozen=True)
class PolygonArea:
    """A one-ring polygon, closed, simple, not crossing ±180."""

    ring: tuple[LonLat, ...]
    centre: LonLat  # ring_centroid(ring), kept so later stages need not recompute it
    area_m2: float

    @classmethod
    def from_ring(cls, ring: Sequence[LonLat]) -> PolygonArea:
        ring = tuple(ring)
        return cls(ring, ring_centroid(ring), ring_area_m2(ring))

    def contains(self, p: LonLat) -> bool:
        return ring_locate(self.ring, p) != OUTSIDE

    @property
    def vertices(self) -> tuple[LonLat, ...]:
        return self.ring

    def to_geojson(self) -> dict[str, Any]:
        return {"type": "Polygon", "coordinates": [[[p.lon, p.lat] for p in self.ring]]}


Area = CircleArea | PolygonArea
