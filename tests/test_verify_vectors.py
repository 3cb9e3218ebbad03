"""Every case of the spec's vectors file gives its expected verdict and location match.

The file lives beside the checkout (../shared/spec/vectors/, where CI lays it);
``now``, trust, policy and the camera's location all come from it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from conftest import VECTORS_PATH
from edge.share.geohash import encode
from edge.share.verify import Accepted, Location, Policy, Rejected, Trust, check_request
from edge.units import parse_duration_s  # the config's own duration parser ("12h")


def _load() -> dict[str, Any]:
    return json.loads(VECTORS_PATH.read_text())


VECTORS = _load()


def _inputs() -> tuple[float, Trust, Policy, Location]:
    policy = VECTORS["policy"]
    return (
        float(VECTORS["now_unix"]),
        Trust.from_config(VECTORS["trust"]["platform_keys"]),
        Policy(
            max_window_s=parse_duration_s(policy["max_window"]),
            max_radius_m=policy["max_radius_m"],
            allow_insecure_localhost=policy["allow_insecure_localhost"],
        ),
        Location(lat=VECTORS["location"]["lat"], lon=VECTORS["location"]["lon"]),
    )


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_vector(case: dict[str, Any]) -> None:
    now_s, trust, policy, location = _inputs()
    payload = base64.b64decode(case["payload_b64"])
    verdict = check_request(payload, now_s=now_s, trust=trust, policy=policy, location=location)
    allowed = case["expect"].split("|")
    if isinstance(verdict, Accepted):
        assert "accepted" in allowed, f"accepted, expected {case['expect']}"
        assert verdict.location_match is case["location_match"]
    else:
        assert isinstance(verdict, Rejected)
        assert verdict.reason in allowed, (
            f"{verdict.reason} ({verdict.detail}), expected {case['expect']}"
        )


def test_vectors_now_is_the_stated_time() -> None:
    from edge.share.verify import parse_rfc3339

    assert parse_rfc3339(VECTORS["now"]) == VECTORS["now_unix"]


def test_geohash_of_the_vectors_location() -> None:
    location = VECTORS["location"]
    expected = VECTORS["geohash"]
    assert encode(location["lat"], location["lon"], len(expected)) == expected
