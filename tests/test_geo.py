"""Geometry on the spec's model: a sphere of R = 6,371,008.8 m, edges straight in lon/lat."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from edge.share.geo import (
    BOUNDARY,
    EARTH_RADIUS_M,
    INSIDE,
    OUTSIDE,
    CircleArea,
    LatitudeBands,
    LonLat,
    MultiPolygon,
    Polygon,
    PolygonArea,
    crosses_antimeridian,
    distance_m,
    ring_area_m2,
    ring_is_simple,
    ring_locate,
    segments_intersect,
)


def ring(*points: tuple[float, float]) -> tuple[LonLat, ...]:
    closed = [LonLat(*p) for p in points]
    return (*closed, closed[0])


SQUARE = ring((0, 0), (4, 0), (4, 4), (0, 4))


# --- distance ----------------------------------------------------------------------


def test_distance_along_a_meridian_is_r_times_the_angle() -> None:
    assert distance_m(LonLat(10, 0), LonLat(10, 1)) == pytest.approx(EARTH_RADIUS_M * math.pi / 180)
    assert distance_m(LonLat(0, -90), LonLat(123, 90)) == pytest.approx(EARTH_RADIUS_M * math.pi)
    assert distance_m(LonLat(0, 0), LonLat(180, 0)) == pytest.approx(EARTH_RADIUS_M * math.pi)


def test_distance_is_short_across_the_antimeridian_and_symmetric() -> None:
    a, b = LonLat(179.999, -16.5), LonLat(-179.999, -16.5)
    assert distance_m(a, b) == pytest.approx(0.002 * math.pi / 180 * EARTH_RADIUS_M
                                             * math.cos(math.radians(16.5)), rel=1e-6)
    assert distance_m(a, b) == distance_m(b, a)
    assert distance_m(a, a) == 0


def test_distance_on_a_parallel_matches_the_small_angle_form() -> None:
    # At 47.6° N, 0.0064° of longitude is about 480 m (the vectors' circle edge case).
    lat = 47.6062
    d = distance_m(LonLat(-122.3321, lat), LonLat(-122.32569745795276, lat))
    expected = EARTH_RADIUS_M * math.cos(math.radians(lat)) * math.radians(0.00640254204724)
    assert d == pytest.approx(expected, rel=1e-6)


def test_circle_contains_its_boundary() -> None:
    centre = LonLat(0, 0)
    edge = LonLat(0, 0.001)
    radius = distance_m(centre, edge)
    assert CircleArea(centre, radius).contains(edge)
    assert not CircleArea(centre, radius * (1 - 1e-9)).contains(edge)


# --- point in polygon ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "where"),
    [
        ((2, 2), INSIDE),
        ((0.000001, 3.999999), INSIDE),
        ((5, 2), OUTSIDE),
        ((-1e-12, 2), OUTSIDE),
        ((2, 4.0000001), OUTSIDE),
        ((0, 2), BOUNDARY),
        ((4, 2), BOUNDARY),
        ((2, 0), BOUNDARY),
        ((2, 4), BOUNDARY),
        ((0, 0), BOUNDARY),
        ((4, 4), BOUNDARY),
        ((4, 0), BOUNDARY),
        ((8, 0), OUTSIDE),  # on the line of an edge, past its end
        ((-1, 4), OUTSIDE),
    ],
)
def test_square(point: tuple[float, float], where: int) -> None:
    assert ring_locate(SQUARE, LonLat(*point)) == where


def test_points_exactly_on_slanted_edges_are_on_the_boundary() -> None:
    triangle = ring((0, 0), (3, 1), (1, 3))
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert ring_locate(triangle, LonLat(3 * t, t)) == BOUNDARY
    # Edges whose points are not exact binary fractions: the exact fallback decides.
    edge_a, edge_b = LonLat(-122.33476772585301, 47.60242285447236), LonLat(
        -122.32943227414698, 47.60637986407274
    )
    tri = (edge_a, edge_b, LonLat(-122.34, 47.61), edge_a)
    assert ring_locate(tri, edge_a) == BOUNDARY and ring_locate(tri, edge_b) == BOUNDARY
    mid = LonLat((edge_a.lon + edge_b.lon) / 2, (edge_a.lat + edge_b.lat) / 2)
    assert ring_locate(tri, mid) in (BOUNDARY, INSIDE, OUTSIDE)  # never an error
    just_in = LonLat(mid.lon - 1e-9, mid.lat + 1e-9)
    just_out = LonLat(mid.lon + 1e-9, mid.lat - 1e-9)
    assert ring_locate(tri, just_in) == INSIDE and ring_locate(tri, just_out) == OUTSIDE


def test_concave_ring_and_either_orientation() -> None:
    u_shape = ring((0, 0), (3, 0), (3, 3), (2, 3), (2, 1), (1, 1), (1, 3), (0, 3))
    assert ring_locate(u_shape, LonLat(1.5, 2)) == OUTSIDE  # in the notch
    assert ring_locate(u_shape, LonLat(1.5, 0.5)) == INSIDE
    assert ring_locate(u_shape, LonLat(1.5, 1)) == BOUNDARY
    assert ring_locate(u_shape, LonLat(2.5, 2)) == INSIDE
    reversed_ring = tuple(reversed(u_shape))
    for p in (LonLat(1.5, 2), LonLat(1.5, 0.5), LonLat(1.5, 1), LonLat(2.5, 2)):
        assert ring_locate(reversed_ring, p) == ring_locate(u_shape, p)


def test_polygon_holes_and_multipolygons() -> None:
    hole = ring((1, 1), (3, 1), (3, 3), (1, 3))
    with_hole = Polygon((SQUARE, hole))
    assert with_hole.contains(LonLat(0.5, 0.5))
    assert not with_hole.contains(LonLat(2, 2))  # in the hole
    assert with_hole.contains(LonLat(1, 2))  # on the hole's boundary
    assert with_hole.contains(LonLat(4, 4))  # on the outer boundary
    assert not with_hole.contains(LonLat(5, 5))
    far = Polygon((ring((10, 10), (11, 10), (11, 11), (10, 11)),))
    both = MultiPolygon((with_hole, far))
    assert both.contains(LonLat(10.5, 10.5)) and both.contains(LonLat(0.5, 0.5))
    assert not both.contains(LonLat(2, 2)) and not both.contains(LonLat(7, 7))


def test_point_in_polygon_agrees_with_a_brute_force_grid() -> None:
    # A random simple (star-shaped) polygon against points of a grid, judged by
    # counting crossings in exact rational arithmetic.
    from fractions import Fraction

    rng = random.Random(7)
    n = 40
    angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(n))
    star = [LonLat(math.cos(a) * rng.uniform(0.3, 1), math.sin(a) * rng.uniform(0.3, 1))
            for a in angles]
    closed = (*star, star[0])

    def exact_inside(p: LonLat) -> bool:
        px, py = Fraction(p.lon), Fraction(p.lat)
        inside = False
        for a, b in itertools.pairwise(closed):
            ax, ay, bx, by = Fraction(a.lon), Fraction(a.lat), Fraction(b.lon), Fraction(b.lat)
            if (ay > py) != (by > py):
                x = ax + (py - ay) * (bx - ax) / (by - ay)
                if x > px:
                    inside = not inside
        return inside

    for i in range(-22, 23):
        for j in range(-22, 23):
            p = LonLat(i / 20, j / 20)
            where = ring_locate(closed, p)
            if where != BOUNDARY:
                assert (where == INSIDE) == exact_inside(p), p


# --- simplicity -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "simple"),
    [
        (((0, 0), (4, 0), (4, 4), (0, 4)), True),
        (((0, 0), (4, 0), (0, 4)), True),
        (((0, 0), (4, 4), (4, 0), (0, 4)), False),  # a bow tie
        (((0, 0), (2, 2), (4, 0), (4, 4), (2, 2), (0, 4)), False),  # two loops touching
        (((0, 0), (4, 0), (4, 4), (2, 0), (0, 4)), False),  # a vertex on another edge
        (((0, 0), (4, 0), (2, 0), (2, 3)), False),  # an edge runs back over the last
        (((0, 0), (2, 0), (4, 0)), False),  # all on one line
        (((0, 0), (4, 0), (4, 0), (4, 4), (0, 4)), True),  # a repeated position adds nothing
        (((0, 0), (4, 0)), False),
        (((0, 0), (4, 0), (4, 4), (0, 4), (0, 2), (2, 2), (0, 2)), False),  # a spike
    ],
)
def test_ring_simplicity(points: tuple[tuple[float, float], ...], simple: bool) -> None:
    r = ring(*points)
    assert ring_is_simple(r) is simple
    assert ring_is_simple(tuple(reversed(r))) is simple


def test_simplicity_of_a_256_position_ring_and_a_subtle_crossing() -> None:
    n = 255
    angles = [2 * math.pi * i / n for i in range(n)]
    circle = [LonLat(math.cos(a), math.sin(a)) for a in angles]
    assert ring_is_simple((*circle, circle[0]))
    # Swap two neighbouring vertices: their edges now cross.
    crossed = list(circle)
    crossed[100], crossed[101] = crossed[101], crossed[100]
    assert not ring_is_simple((*crossed, crossed[0]))


def test_segments_that_only_touch_intersect() -> None:
    a, b = LonLat(0, 0), LonLat(2, 2)
    assert segments_intersect(a, b, LonLat(1, 1), LonLat(5, 0))  # T-junction
    assert segments_intersect(a, b, LonLat(2, 2), LonLat(3, 0))  # shared endpoint
    assert segments_intersect(a, b, LonLat(1, 1), LonLat(3, 3))  # collinear overlap
    assert not segments_intersect(a, b, LonLat(3, 3), LonLat(4, 4))  # collinear apart
    assert not segments_intersect(a, b, LonLat(0, 1), LonLat(1, 2))  # parallel


def test_antimeridian_crossing_is_an_edge_over_180_degrees() -> None:
    assert crosses_antimeridian(ring((179.9, 0), (-179.9, 0), (-179.9, 1), (179.9, 1)))
    assert not crosses_antimeridian(ring((179.9, 0), (180, 0), (180, 1), (179.9, 1)))
    assert not crosses_antimeridian(ring((-10, 0), (10, 0), (10, 1)))
    assert crosses_antimeridian(ring((-180, 0), (180, 0), (180, 1)))


# --- area ------------------------------------------------------------------------------


def test_area_of_a_lon_lat_rectangle_is_exact() -> None:
    # A rectangle in lon/lat on the sphere: R² · Δλ · (sin φ2 - sin φ1), exactly.
    for west, south, east, north in [(0, 0, 1, 1), (-122.34, 47.60, -122.32, 47.61),
                                     (10, -60, 10.001, -59.999), (0, 80, 120, 89.9)]:
        r = ring((west, south), (east, south), (east, north), (west, north))
        expected = EARTH_RADIUS_M**2 * math.radians(east - west) * (
            math.sin(math.radians(north)) - math.sin(math.radians(south)))
        assert ring_area_m2(r) == pytest.approx(expected, rel=1e-9)
        assert ring_area_m2(tuple(reversed(r))) == pytest.approx(expected, rel=1e-9)


def test_area_of_a_small_triangle_matches_the_local_flat_estimate() -> None:
    lat0 = 47.6
    metres_per_deg_lat = EARTH_RADIUS_M * math.pi / 180
    metres_per_deg_lon = metres_per_deg_lat * math.cos(math.radians(lat0))
    tri = ring((-122.33, lat0), (-122.32, lat0), (-122.33, lat0 + 0.005))
    flat = 0.5 * (0.01 * metres_per_deg_lon) * (0.005 * metres_per_deg_lat)
    assert ring_area_m2(tri) == pytest.approx(flat, rel=1e-3)


def test_area_of_the_vectors_95_and_105_percent_squares() -> None:
    limit = math.pi * 650**2
    r95 = ring((-122.33958912883644, 47.601150661019716), (-122.32461087116356, 47.601150661019716),
               (-122.32461087116356, 47.611249338980286), (-122.33958912883644, 47.611249338980286))
    r105 = ring((-122.33997343322862, 47.60089155436123), (-122.32422656677137, 47.60089155436123),
                (-122.32422656677137, 47.61150844563877), (-122.33997343322862, 47.61150844563877))
    assert ring_area_m2(r95) / limit == pytest.approx(0.95, abs=0.01)
    assert ring_area_m2(r105) / limit == pytest.approx(1.05, abs=0.01)


def test_polygon_area_keeps_its_centre() -> None:
    area = PolygonArea.from_ring(ring((0, 0), (2, 0), (2, 2), (0, 2)))
    assert area.centre == LonLat(1, 1)
    assert area.contains(LonLat(2, 1)) and not area.contains(LonLat(2.1, 1))
    tri = PolygonArea.from_ring(ring((0, 0), (3, 0), (0, 3)))
    assert tri.centre.lon == pytest.approx(1) and tri.centre.lat == pytest.approx(1)


def test_latitude_index_gives_the_same_answers_as_reading_every_edge() -> None:
    # A jurisdiction-sized ring (2,000 positions, a wobbly star) with a hole, queried
    # at random points, at vertices, on edges and on band borders.
    rng = random.Random(11)
    m = 2000
    angles = [2 * math.pi * i / m for i in range(m)]
    outer = [LonLat(round(math.cos(a) * (1 + 0.3 * math.sin(9 * a)), 6),
                    round(math.sin(a) * (1 + 0.3 * math.sin(9 * a)), 6)) for a in angles]
    outer_ring = (*outer, outer[0])
    hole = ring((-0.1, -0.1), (0.1, -0.1), (0.1, 0.1), (-0.1, 0.1))
    indexed = Polygon((outer_ring, hole))
    queries = [LonLat(rng.uniform(-1.4, 1.4), rng.uniform(-1.4, 1.4)) for _ in range(300)]
    queries += outer[::40] + [LonLat((a.lon + b.lon) / 2, (a.lat + b.lat) / 2)
                              for a, b in itertools.pairwise(outer[::41])]
    queries += [LonLat(0.05, -0.1), LonLat(0.0, 0.0), LonLat(0.1, 0.05)]
    bands = LatitudeBands(outer_ring)
    queries += [LonLat(rng.uniform(-1, 1), bands.south + k * bands.height)
                for k in range(0, bands.count, 3)]
    for p in queries:
        plain = ring_locate(outer_ring, p) != OUTSIDE and ring_locate(hole, p) != INSIDE
        assert indexed.contains(p) == plain, p


def test_latitude_index_gives_up_on_rings_it_cannot_help() -> None:
    # A zigzag whose every edge spans the whole height: each band would list every edge.
    zigzag = [LonLat(i / 100, 0 if i % 2 else 1) for i in range(200)]
    closed = (*zigzag, LonLat(2, -1), LonLat(0, -1), zigzag[0])
    assert LatitudeBands(closed).edges_near(0.5) is None
    polygon = Polygon((closed,))
    for p in (LonLat(0.005, 0.1), LonLat(0.015, 0.5), LonLat(1, -0.5), LonLat(3, 0)):
        assert polygon.contains(p) == (ring_locate(closed, p) != OUTSIDE)
