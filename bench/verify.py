"""Verifications per second for one valid payload, beside the floor: the bare
Ed25519 verifications a request needs (two for a certificate seen for the first
time, one when the verifier remembers the agency's certificate).

    python bench/verify.py [--seconds 3]

Prints requests/s for check_request on a circle request (certificate
remembered, the steady state for an agency; and forgotten before each call, the
worst case), on a 255-position polygon request, the bare floors and the ratios.
One core; run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from edge.share.jws import parse_compact
from edge.share.verify import Accepted, Policy, check_request, forget_certificates
from signing import AGENCY_KEY, LOCATION, NOW_S, PLATFORM_KEY, make_payload, trust_for


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

    def floor_two() -> None:
        platform_public.verify(cert.signature, cert.signing_input)
        agency_public.verify(request.signature, request.signing_input)

    def floor_one() -> None:
        agency_public.verify(request.signature, request.signing_input)

    def judge(payload: bytes) -> Callable[[], object]:
        return lambda: check_request(
            payload, now_s=NOW_S, trust=trust, policy=policy, location=LOCATION
        )

    judge_circle = judge(circle)

    def judge_circle_cold() -> None:
        forget_certificates()
        judge_circle()

    rates = {
        "floor: 1 x Ed25519 verify": (rate(floor_one, args.seconds), None),
        "floor: 2 x Ed25519 verify": (rate(floor_two, args.seconds), None),
    }
    one, two = rates["floor: 1 x Ed25519 verify"][0], rates["floor: 2 x Ed25519 verify"][0]
    rates["circle, certificate remembered"] = (rate(judge_circle, args.seconds), one)
    rates["circle, certificate new"] = (rate(judge_circle_cold, args.seconds), two)
    rates["255-gon, certificate remembered"] = (rate(judge(polygon), args.seconds), one)
    print(f"payload sizes: circle {len(circle)} B, polygon {len(polygon)} B")
    for name, (per_s, floor) in rates.items():
        ratio = f"  {per_s / floor:.2f} x its floor" if floor else ""
        print(f"{name:34s} {per_s:8.0f} /s  {1e6 / per_s:6.0f} us each{ratio}")


if __name__ == "__main__":
    main()
