"""Verifications per second for one valid payload, beside the floor: the two
Ed25519 verifications every accepted request needs, done bare.

    python bench/verify.py [--seconds 3]

Prints requests/s for check_request on a circle and on a 255-position polygon
request, the bare two-signature floor, and the ratios. Run it alone: the figures
are per core on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from signing import AGENCY_KEY, LOCATION, NOW_S, PLATFORM_KEY, make_payload, trust_for

from edge.share.jws import parse_compact
from edge.share.verify import Accepted, Policy, check_request


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``work`` over about ``seconds`` (after a short warm-up)."""
    for _ in range(50):
        work()
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            work()
        calls += 50
    return calls / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    import json
    import math

    trust, policy = trust_for(PLATFORM_KEY), Policy()
    circle = make_payload()
    n = 255
    ring = [[LOCATION.lon + 0.002 * math.cos(2 * math.pi * i / n),
             LOCATION.lat + 0.002 * math.sin(2 * math.pi * i / n)] for i in range(n)]
    polygon = make_payload(request_overrides={
        "area": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}})
    for payload in (circle, polygon):
        verdict = check_request(payload, now_s=NOW_S, trust=trust, policy=policy, location=LOCATION)
        assert isinstance(verdict, Accepted), verdict

    outer = json.loads(circle)
    cert = parse_compact(outer["cert"], typ="agency-cert+jwt")
    request = parse_compact(outer["request"], typ="assist-request+jwt")
    platform_public, agency_public = PLATFORM_KEY.public_key(), AGENCY_KEY.public_key()

    def floor() -> None:
        platform_public.verify(cert.signature, cert.signing_input)
        agency_public.verify(request.signature, request.signing_input)

    def judge(payload: bytes) -> Callable[[], object]:
        return lambda: check_request(
            payload, now_s=NOW_S, trust=trust, policy=policy, location=LOCATION
        )

    floor_rate = rate(floor, args.seconds)
    circle_rate = rate(judge(circle), args.seconds)
    polygon_rate = rate(judge(polygon), args.seconds)
    print(f"payload sizes: circle {len(circle)} B, polygon {len(polygon)} B")
    print(f"floor (2 x Ed25519 verify):  {floor_rate:8.0f} /s")
    print(f"check_request, circle:       {circle_rate:8.0f} /s  "
          f"({circle_rate / floor_rate:.2f} x floor, {1e6 / circle_rate:.0f} us each)")
    print(f"check_request, 255-gon:      {polygon_rate:8.0f} /s  "
          f"({polygon_rate / floor_rate:.2f} x floor, {1e6 / polygon_rate:.0f} us each)")


if __name__ == "__main__":
    main()
