"""Builds signed assistance requests for tests, with real Ed25519 (cryptography).

Every test that needs a request, valid or broken in one precise way, starts
here::

    from signing import PLATFORM_KEY, AGENCY_KEY, DELETE, NOW_S, make_payload, trust_for

    payload = make_payload(PLATFORM_KEY, AGENCY_KEY,
                           request_overrides={"title": "x" * 121, "upload.url": "https://…"},
                           cert_overrides={"upload_hosts": ["127.0.0.1"]})
    check_request(payload, now_s=NOW_S, trust=trust_for(PLATFORM_KEY), policy=Policy(),
                  location=LOCATION)

Overrides replace top-level claims; a dotted key (``"window.start"``,
``"upload.url"``, ``"jwk.x"``) reaches one level into an object; the value
``DELETE`` removes the claim. Defaults mirror the spec's vectors: a 500 m circle
on the camera, a 30-minute window ending 10 minutes before ``now_s``, a
jurisdiction box of ±0.5° around the camera, upload to evidence.example.gov.
Keys are derived from fixed labels, so runs are reproducible.
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge.share.jws import b64url_encode, sign_compact, sign_raw
from edge.share.verify import Location, Policy, Trust

NOW_S = 1_796_040_000.0  # 2026-11-30T12:00:00Z, the vectors' "now"
LOCATION = Location(lat=47.6062, lon=-122.3321)  # the vectors' camera
PLATFORM_ID = "example-platform"
AGENCY_ID = "us-wa-example-pd"
UPLOAD_HOST = "evidence.example.gov"
CERT_HEADER = {"alg": "EdDSA", "typ": "agency-cert+jwt"}
REQUEST_HEADER = {"alg": "EdDSA", "typ": "assist-request+jwt"}


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Any = _Delete()  # an override value that removes the claim


def key_from_label(label: str) -> Ed25519PrivateKey:
    """A deterministic Ed25519 key: the seed is SHA-256 of the label."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


PLATFORM_KEY = key_from_label("edge-tests platform")
AGENCY_KEY = key_from_label("edge-tests agency")
ROGUE_KEY = key_from_label("edge-tests rogue")


def public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_b64(key: Ed25519PrivateKey) -> str:
    """The form ``trust.platform_keys`` takes in the config."""
    return b64url_encode(public_raw(key))


def jwk_for(key: Ed25519PrivateKey) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": public_b64(key)}


def trust_for(*platform_keys: Ed25519PrivateKey) -> Trust:
    return Trust(tuple(public_raw(k) for k in platform_keys or (PLATFORM_KEY,)))


def rfc3339(unix_s: float) -> str:
    """``2026-11-30T11:20:00Z`` (milliseconds shown only when there are some)."""
    moment = datetime.fromtimestamp(unix_s, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond // 1000:03d}"
    return text + "Z"


def box(lat: float, lon: float, half_deg: float) -> dict[str, Any]:
    """A GeoJSON Polygon: the square of ±half_deg around (lat, lon), counter-clockwise."""
    w, e, s, n = lon - half_deg, lon + half_deg, lat - half_deg, lat + half_deg
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def circle(lat: float, lon: float, radius_m: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat], "radius_m": radius_m}


def cert_claims(
    agency_key: Ed25519PrivateKey = AGENCY_KEY,
    *,
    now_s: float = NOW_S,
    location: Location = LOCATION,
) -> dict[str, Any]:
    return {
        "iss": PLATFORM_ID,
        "sub": AGENCY_ID,
        "name": "Example Police Department",
        "kind": "police",
        "jwk": jwk_for(agency_key),
        "jurisdiction": box(location.lat, location.lon, 0.5),
        "upload_hosts": [UPLOAD_HOST],
        "iat": int(now_s) - 60,
        "exp": int(now_s) + 365 * 86_400,
    }


def request_claims(*, now_s: float = NOW_S, location: Location = LOCATION) -> dict[str, Any]:
    jti = str(uuid.uuid4())
    return {
        "iss": AGENCY_ID,
        "jti": jti,
        "iat": int(now_s) - 30,
        "exp": int(now_s) + 3 * 86_400,
        "title": "Package theft on Elm St",
        "description": "Looking for footage of a person carrying a brown box.",
        "case_ref": "2026-123456",
        "public_url": f"https://platform.example.org/r/{jti}",
        "area": circle(location.lat, location.lon, 500),
        "window": {"start": rfc3339(now_s - 40 * 60), "end": rfc3339(now_s - 10 * 60)},
        "upload": {"url": f"https://{UPLOAD_HOST}/files/", "protocol": "tus"},
    }


def apply_overrides(claims: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``claims`` with overrides applied (dotted keys reach one level in;
    ``DELETE`` removes)."""
    result = copy.deepcopy(claims)
    for key, value in (overrides or {}).items():
        target = result
        if "." in key:
            outer, key = key.split(".", 1)
            target = result.setdefault(outer, {})
        if value is DELETE:
            target.pop(key, None)
        else:
            target[key] = copy.deepcopy(value)
    return result


def make_cert(
    platform_key: Ed25519PrivateKey = PLATFORM_KEY,
    agency_key: Ed25519PrivateKey = AGENCY_KEY,
    cert_overrides: Mapping[str, Any] | None = None,
    *,
    header: Mapping[str, Any] | None = None,
    now_s: float = NOW_S,
    location: Location = LOCATION,
) -> str:
    defaults = cert_claims(agency_key, now_s=now_s, location=location)
    claims = apply_overrides(defaults, cert_overrides)
    return _sign(header or CERT_HEADER, claims, platform_key)


def make_request(
    agency_key: Ed25519PrivateKey = AGENCY_KEY,
    request_overrides: Mapping[str, Any] | None = None,
    *,
    header: Mapping[str, Any] | None = None,
    now_s: float = NOW_S,
    location: Location = LOCATION,
) -> str:
    claims = apply_overrides(request_claims(now_s=now_s, location=location), request_overrides)
    return _sign(header or REQUEST_HEADER, claims, agency_key)


def make_payload(
    platform_key: Ed25519PrivateKey = PLATFORM_KEY,
    agency_key: Ed25519PrivateKey = AGENCY_KEY,
    *,
    cert_overrides: Mapping[str, Any] | None = None,
    request_overrides: Mapping[str, Any] | None = None,
    cert_header: Mapping[str, Any] | None = None,
    request_header: Mapping[str, Any] | None = None,
    outer_overrides: Mapping[str, Any] | None = None,
    now_s: float = NOW_S,
    location: Location = LOCATION,
) -> bytes:
    """The MQTT payload bytes: ``{"cert": …, "request": …}`` plus outer overrides
    (``{"request": DELETE}``, ``{"note": "x"}``, ``{"cert": 5}``)."""
    outer = {
        "cert": make_cert(platform_key, agency_key, cert_overrides, header=cert_header,
                          now_s=now_s, location=location),
        "request": make_request(agency_key, request_overrides, header=request_header,
                                now_s=now_s, location=location),
    }
    return json.dumps(apply_overrides(outer, outer_overrides)).encode()


def sign_text(header_json: str | bytes, claims_json: str | bytes, key: Ed25519PrivateKey) -> str:
    """Signs header and claims given as raw JSON text, exactly as written (for
    duplicate members, NaN, lone surrogate escapes, non-objects)."""

    def encode(part: str | bytes) -> str:
        return b64url_encode(part.encode() if isinstance(part, str) else part)

    return sign_raw(encode(header_json), encode(claims_json), key)


def payload_of(cert: str, request: str, **extra: Any) -> bytes:
    return json.dumps({"cert": cert, "request": request, **extra}).encode()


def default_policy(**changes: Any) -> Policy:
    return Policy(**changes)


def _sign(header: Mapping[str, Any], claims: Any, key: Ed25519PrivateKey) -> str:
    if header.get("alg") in ("EdDSA", "Ed25519"):
        return sign_compact(header, claims, key)
    # Tests of bad_alg sign other headers too: serialise by hand.
    return sign_text(json.dumps(dict(header)), json.dumps(claims), key)
