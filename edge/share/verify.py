"""Judges one assistance-request payload exactly as assist-request-v1 says.

``check_request`` is pure: payload bytes, the time, the trust and the policy in;
a verdict out. It keeps no state (the replay cache, ``duplicate``, is the
store's, keyed on ``VerifiedRequest.replay_key``) and reads no clock, so tests
and ``edge request check --now`` judge at any time they like.

Checks run in the spec's table order and the first failure names the reason:
too_large, bad_payload, bad_alg (cert, then request), bad_cert, cert_expired,
bad_signature, bad_request, expired, bad_window, window_too_long,
future_window, bad_area, area_too_large, outside_jurisdiction,
upload_not_allowed. Within one reason the order of the finer checks does not
matter (the code is the same); ``detail`` says which one failed.

Untrusted input is bounded before it is parsed (65,536 bytes), and every
string a rejection carries (``iss``, ``jti``, ``detail``) is short and printable.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import json
import math
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal, TypeGuard

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.buffer.agefile import RecipientError, recipient_key
from edge.share.geo import (
    Area,
    CircleArea,
    LonLat,
    MultiPolygon,
    Polygon,
    PolygonArea,
    crosses_antimeridian,
    ring_is_simple,
)
from edge.share.jws import (
    CompactJws,
    IJsonError,
    JwsError,
    b64url_decode,
    loads_ijson,
    parse_compact,
)

MAX_PAYLOAD_BYTES = 65_536
CERT_TYP = "agency-cert+jwt"
REQUEST_TYP = "assist-request+jwt"
MAX_REQUEST_LIFETIME_S = 30 * 86_400
MAX_NAME_CHARS, MAX_TITLE_CHARS, MAX_DESCRIPTION_CHARS, MAX_CASE_REF_CHARS = 200, 120, 2000, 64
MIN_RING_POSITIONS, MAX_RING_POSITIONS = 4, 256

# Every reason code, in the spec's order. ``duplicate`` is last and is never
# produced here: only the store knows what it has already accepted.
REASONS: tuple[str, ...] = (
    "too_large",
    "bad_payload",
    "bad_alg",
    "bad_cert",
    "cert_expired",
    "bad_signature",
    "bad_request",
    "expired",
    "bad_window",
    "window_too_long",
    "future_window",
    "bad_area",
    "area_too_large",
    "outside_jurisdiction",
    "upload_not_allowed",
    "duplicate",
)

AgencyKind = Literal["police", "fire", "other"]
UploadProtocol = Literal["tus", "put"]


# --- inputs ------------------------------------------------------------------


@dataclass(frozen=True)
class Trust:
    """The platform keys a certificate must chain to (raw 32-byte Ed25519 keys)."""

    platform_keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        keys = []
        for index, raw in enumerate(self.platform_keys):
            if not isinstance(raw, bytes) or len(raw) != 32:
                raise ValueError(f"trust.platform_keys[{index}]: not 32 bytes")
            keys.append(Ed25519PublicKey.from_public_bytes(raw))
        object.__setattr__(self, "_keys", tuple(keys))

    @property
    def public_keys(self) -> tuple[Ed25519PublicKey, ...]:
        keys: tuple[Ed25519PublicKey, ...] = self.__dict__["_keys"]
        return keys

    @classmethod
    def from_config(cls, encoded: Iterable[str]) -> Trust:
        """From ``trust.platform_keys``: base64url raw Ed25519 public keys (padding
        tolerated here, it is the owner's file). Raises ``ValueError`` naming the
        entry, for the config loader to print."""
        keys = []
        for index, text in enumerate(encoded):
            where = f"trust.platform_keys[{index}]"
            if not isinstance(text, str):
                raise ValueError(f"{where}: must be a string")
            try:
                raw = b64url_decode(text.strip().rstrip("="))
            except ValueError:
                raise ValueError(f"{where}: not base64url: {text[:60]!r}") from None
            if len(raw) != 32:
                raise ValueError(
                    f"{where}: decodes to {len(raw)} bytes, an Ed25519 public key is 32"
                )
            keys.append(raw)
        return cls(tuple(keys))


@dataclass(frozen=True)
class Policy:
    """The camera's limits (``[policy]`` and ``[upload]`` in the config)."""

    max_window_s: float = 43_200  # 12 h
    max_radius_m: float = 650
    allow_insecure_localhost: bool = False  # tests only: http to 127.0.0.1
    skew_s: float = 300  # applied to iat only

    def __post_init__(self) -> None:
        for name in ("max_window_s", "max_radius_m"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"policy {name} must be a number > 0, not {value!r}")
        if not (math.isfinite(self.skew_s) and self.skew_s >= 0):
            raise ValueError(f"policy skew_s must be >= 0, not {self.skew_s!r}")

    @property
    def max_area_m2(self) -> float:
        return math.pi * self.max_radius_m**2


@dataclass(frozen=True)
class Location:
    """The camera's position in degrees (config ``device.latitude/longitude``)."""

    lat: float
    lon: float

    def __post_init__(self) -> None:
        if not (-90 <= self.lat <= 90 and -180 <= self.lon <= 180):
            raise ValueError(f"location out of range: lat {self.lat}, lon {self.lon}")

    @property
    def point(self) -> LonLat:
        return LonLat(self.lon, self.lat)


# --- outputs -----------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedRequest:
    """Everything later stages need from a request that passed every check."""

    iss: str  # agency id (= cert sub)
    jti: str  # request id, canonical lowercase UUID text
    iat_s: float
    exp_s: float
    agency_name: str
    agency_kind: AgencyKind
    platform_id: str  # cert iss
    cert_exp_s: float
    title: str
    description: str
    case_ref: str | None
    public_url: str
    area: Area  # CircleArea or PolygonArea; .centre, .contains(), .to_geojson()
    window_start: str  # the RFC 3339 texts as sent (the manifest repeats them)
    window_end: str
    window_start_ms: int  # floor of the exact instant
    window_end_ms: int  # ceiling: [start_ms, end_ms] covers the window asked for
    upload_url: str  # normalised: lowercase scheme and host (as checked), no fragment
    upload_url_as_sent: str
    upload_host: str  # the checked host, one of upload_hosts (IPv6 without brackets)
    upload_port: int | None
    upload_protocol: UploadProtocol
    recipient: str | None  # age X25519 recipient, lowercase
    upload_hosts: tuple[str, ...]  # the certificate's, normalised

    @property
    def agency_id(self) -> str:
        return self.iss

    @property
    def replay_key(self) -> tuple[str, str]:
        """The (iss, jti) pair the store keys duplicates on."""
        return (self.iss, self.jti)

    @property
    def centre(self) -> LonLat:
        """The area's centre, for "distance from the area's centre"."""
        return self.area.centre


@dataclass(frozen=True)
class Accepted:
    request: VerifiedRequest
    location_match: bool  # the camera lies inside the area (boundary included)


@dataclass(frozen=True)
class Rejected:
    """``iss`` and ``jti`` are as the request claims them when they could be read
    (a string of at most 200 code points; a canonical UUID): authenticated by the
    agency's signature only for reasons after ``bad_signature``."""

    reason: str
    iss: str | None
    jti: str | None
    detail: str


Verdict = Accepted | Rejected


# --- the check ---------------------------------------------------------------


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _Cert:
    iss: str
    sub: str
    name: str
    kind: AgencyKind
    key: Ed25519PublicKey
    jurisdiction: MultiPolygon
    upload_hosts: tuple[str, ...]
    iat: float
    exp: float


def check_request(
    payload: bytes, *, now_s: float, trust: Trust, policy: Policy, location: Location
) -> Verdict:
    """Judges one MQTT payload at time ``now_s`` (Unix seconds). Never raises for
    any payload: every problem is a ``Rejected`` with a spec reason code."""
    claimed: dict[str, str | None] = {"iss": None, "jti": None}
    try:
        request = _check(payload, now_s, trust, policy, claimed)
    except _Reject as rejection:
        return Rejected(rejection.reason, claimed["iss"], claimed["jti"], rejection.detail)
    return Accepted(request, request.area.contains(location.point))


def _check(
    payload: bytes, now_s: float, trust: Trust, policy: Policy, claimed: dict[str, str | None]
) -> VerifiedRequest:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _Reject("too_large", f"{len(payload)} bytes, over {MAX_PAYLOAD_BYTES}")

    # bad_payload
    try:
        outer = loads_ijson(payload)
    except IJsonError as exc:
        raise _Reject("bad_payload", str(exc)) from None
    if not isinstance(outer, dict):
        raise _Reject("bad_payload", "not a JSON object")
    for member in ("cert", "request"):
        if not isinstance(outer.get(member), str):
            raise _Reject("bad_payload", f"{member} missing or not a string")

    # bad_alg: both headers before any signature. A remembered certificate passed
    # its header checks (and every bad_cert check) before: only the request's are left.
    cert_token = outer["cert"]
    cert = _CERTS.get(cert_token, trust)
    cert_jws = _parse_jws(cert_token, CERT_TYP, "cert") if cert is None else None
    request_jws = _parse_jws(outer["request"], REQUEST_TYP, "request")
    request_claims = _claims_or_error(request_jws)
    if isinstance(request_claims, dict):  # for the audit log, before anything is proven
        claimed["iss"] = _short_string(request_claims.get("iss"))
        jti = request_claims.get("jti")
        claimed["jti"] = jti if _is_uuid(jti) else None

    # bad_cert, cert_expired
    if cert is None:
        assert cert_jws is not None
        cert = _check_cert(cert_jws, trust)  # raises for a bad one: failures are not remembered
        _CERTS.put(cert_token, trust, cert)
    if cert.exp <= now_s:
        raise _Reject("cert_expired", f"certificate exp {_show(cert.exp)} <= now {now_s}")
    if cert.iat > now_s + policy.skew_s:
        raise _Reject("cert_expired", f"certificate iat {_show(cert.iat)} is in the future")

    # bad_signature
    if not request_jws.verify(cert.key):
        raise _Reject("bad_signature", "request signature fails under cert.jwk")

    # bad_request
    if isinstance(request_claims, IJsonError):
        raise _Reject("bad_request", f"claims: {request_claims}")
    fields = _check_request_claims(request_claims, cert)

    # expired
    iat, exp = fields.iat, fields.exp
    if exp <= now_s:
        raise _Reject("expired", f"exp {_show(exp)} <= now {now_s}")
    if iat > now_s + policy.skew_s:
        raise _Reject("expired", f"iat {_show(iat)} is in the future")
    if _exact(exp) - _exact(iat) > MAX_REQUEST_LIFETIME_S:
        raise _Reject("expired", "exp - iat is over 30 days")

    # bad_window, window_too_long, future_window
    start_text, end_text, start, end = _check_window(request_claims.get("window"))
    if end - start > _exact(policy.max_window_s):
        raise _Reject(
            "window_too_long", f"window of {float(end - start)} s, over {policy.max_window_s}"
        )
    if end > _exact(iat) + _exact(policy.skew_s):
        raise _Reject("future_window", "window ends after the request was posted")

    # bad_area, area_too_large, outside_jurisdiction
    area = _check_area(request_claims.get("area"))
    if isinstance(area, CircleArea):
        if area.radius_m > policy.max_radius_m:
            raise _Reject("area_too_large", f"radius {area.radius_m} m, over {policy.max_radius_m}")
    elif area.area_m2 > policy.max_area_m2:
        raise _Reject(
            "area_too_large", f"polygon of {area.area_m2:.0f} m², over {policy.max_area_m2:.0f}"
        )
    for vertex in area.vertices:
        if not cert.jurisdiction.contains(vertex):
            raise _Reject(
                "outside_jurisdiction", f"{vertex.lon}, {vertex.lat} is outside the jurisdiction"
            )

    # upload_not_allowed
    upload = _checked_upload_url(fields.upload_url, cert.upload_hosts, policy)

    return VerifiedRequest(
        iss=fields.iss,
        jti=fields.jti,
        iat_s=float(iat),
        exp_s=float(exp),
        agency_name=cert.name,
        agency_kind=cert.kind,
        platform_id=cert.iss,
        cert_exp_s=cert.exp,
        title=fields.title,
        description=fields.description,
        case_ref=fields.case_ref,
        public_url=fields.public_url,
        area=area,
        window_start=start_text,
        window_end=end_text,
        # Floor and ceiling in integers (an int has a numerator and a denominator too).
        window_start_ms=start.numerator * 1000 // start.denominator,
        window_end_ms=-(-end.numerator * 1000 // end.denominator),
        upload_url=upload.normalised,
        upload_url_as_sent=fields.upload_url,
        upload_host=upload.host,
        upload_port=upload.port,
        upload_protocol=fields.upload_protocol,
        recipient=fields.recipient,
        upload_hosts=cert.upload_hosts,
    )


def _parse_jws(token: str, typ: str, which: str) -> CompactJws:
    try:
        return parse_compact(token, typ=typ)
    except JwsError as exc:
        raise _Reject("bad_alg", f"{which}: {exc}") from None


def _claims_or_error(jws: CompactJws) -> dict[str, Any] | IJsonError:
    try:
        return jws.claims()
    except IJsonError as exc:
        return exc


# --- certificate -------------------------------------------------------------


class _CertMemory:
    """The last few certificates that passed every certificate check, by exact
    token and trust.

    An agency's certificate comes with every one of its requests; remembering
    it saves, per request, parsing the certificate (its header, for ``bad_alg``,
    and its claims with the jurisdiction) and the platform's signature check.
    Those checks depend on nothing but the token and the trust (its times are
    checked outside, on every request), so a remembered token would pass them
    all again: skipping them gives every message the same reason. A changed
    trust is another key; failures are never remembered.

    Threads: any (the intake's worker, a CLI check); ``_lock`` guards ``_certs``.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._certs: dict[tuple[str, Trust], _Cert] = {}  # oldest use first

    def get(self, token: str, trust: Trust) -> _Cert | None:
        key = (token, trust)
        with self._lock:
            cert = self._certs.pop(key, None)
            if cert is not None:
                self._certs[key] = cert  # now the most recently used
            return cert

    def put(self, token: str, trust: Trust, cert: _Cert) -> None:
        with self._lock:
            self._certs[(token, trust)] = cert
            while len(self._certs) > self._size:
                del self._certs[next(iter(self._certs))]

    def clear(self) -> None:
        with self._lock:
            self._certs.clear()


_CERTS = _CertMemory(16)  # agencies heard at once; a miss costs only a full check


def forget_certificates() -> None:
    """Empties the memory of verified certificates (benchmarks of the cold path)."""
    _CERTS.clear()


def _check_cert(jws: CompactJws, trust: Trust) -> _Cert:
    if not any(jws.verify(key) for key in trust.public_keys):
        raise _Reject("bad_cert", "signature fails under every trusted platform key")
    try:
        claims = jws.claims()
    except IJsonError as exc:
        raise _Reject("bad_cert", f"claims: {exc}") from None

    def bad(detail: str) -> _Reject:
        return _Reject("bad_cert", detail)

    iss, sub, name = claims.get("iss"), claims.get("sub"), claims.get("name")
    if not isinstance(iss, str):
        raise bad("iss missing or not a string")
    if not isinstance(sub, str):
        raise bad("sub missing or not a string")
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise bad(f"name missing, not a string or over {MAX_NAME_CHARS} code points")
    kind = claims.get("kind")
    if kind not in ("police", "fire", "other"):
        raise bad(f"kind {_show(kind)} is not police, fire or other")
    key = _agency_key(claims.get("jwk"))
    if key is None:
        raise bad("jwk is not an Ed25519 OKP key with a 32-byte x")
    jurisdiction = _jurisdiction(claims.get("jurisdiction"))
    if jurisdiction is None:
        raise bad("jurisdiction is not a GeoJSON Polygon or MultiPolygon")
    hosts = claims.get("upload_hosts")
    if not isinstance(hosts, list) or not hosts:
        raise bad("upload_hosts missing, not an array or empty")
    normalised_hosts = []
    for host in hosts:
        normalised = _normalise_host(host) if isinstance(host, str) else None
        if normalised is None:
            raise bad(f"upload_hosts: {_show(host)} is not a DNS name or IP literal")
        normalised_hosts.append(normalised)
    iat, exp = _number(claims.get("iat")), _number(claims.get("exp"))
    if iat is None or exp is None:
        raise bad("iat or exp missing or not a NumericDate")
    if not exp > iat:
        raise bad(f"exp {_show(exp)} is not after iat {_show(iat)}")
    return _Cert(iss, sub, name, kind, key, jurisdiction, tuple(normalised_hosts), iat, exp)


def _agency_key(jwk: Any) -> Ed25519PublicKey | None:
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        return None
    x = jwk.get("x")
    if not isinstance(x, str):
        return None
    try:
        raw = b64url_decode(x)
    except ValueError:
        return None
    if len(raw) != 32:
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:  # OpenSSL takes any 32 bytes today; a stricter one may not
        return None


def _position(value: Any, *, allow_altitude: bool) -> LonLat | None:
    """A GeoJSON position [lon, lat] (a third number, altitude, only where
    ``allow_altitude``), numbers in range; None if not."""
    if not isinstance(value, list) or len(value) not in ((2, 3) if allow_altitude else (2,)):
        return None
    if not all(_is_number(v) for v in value):
        return None
    lon, lat = value[0], value[1]
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        return None
    return LonLat(float(lon), float(lat))


def _linear_ring(value: Any, *, allow_altitude: bool) -> tuple[LonLat, ...] | None:
    if not isinstance(value, list) or len(value) < MIN_RING_POSITIONS:
        return None
    ring = []
    for item in value:
        position = _position(item, allow_altitude=allow_altitude)
        if position is None:
            return None
        ring.append(position)
    if ring[0] != ring[-1]:
        return None
    return tuple(ring)


def _jurisdiction(value: Any) -> MultiPolygon | None:
    """A GeoJSON Polygon or MultiPolygon (RFC 7946 positions, altitude allowed and
    ignored; rings closed, of 4 or more positions; at least one polygon)."""
    if not isinstance(value, dict):
        return None
    kind, coordinates = value.get("type"), value.get("coordinates")
    if kind == "Polygon":
        polygons_json = [coordinates]
    elif kind == "MultiPolygon" and isinstance(coordinates, list) and coordinates:
        polygons_json = coordinates
    else:
        return None
    polygons = []
    for polygon_json in polygons_json:
        if not isinstance(polygon_json, list) or not polygon_json:
            return None
        rings = []
        for ring_json in polygon_json:
            ring = _linear_ring(ring_json, allow_altitude=True)
            if ring is None:
                return None
            rings.append(ring)
        polygons.append(Polygon(tuple(rings)))
    return MultiPolygon(tuple(polygons))


# --- request claims ----------------------------------------------------------


@dataclass(frozen=True)
class _RequestClaims:
    """The request's claims that passed ``bad_request`` (window and area come later)."""

    iss: str
    jti: str
    iat: int | float  # exact as sent: the lifetime and window checks compare exactly
    exp: int | float
    title: str
    description: str
    case_ref: str | None
    public_url: str
    upload_url: str
    upload_protocol: UploadProtocol
    recipient: str | None


def _check_request_claims(claims: dict[str, Any], cert: _Cert) -> _RequestClaims:
    def bad(detail: str) -> _Reject:
        return _Reject("bad_request", detail)

    iss, jti = claims.get("iss"), claims.get("jti")
    if not isinstance(iss, str):
        raise bad("iss missing or not a string")
    if not isinstance(jti, str):
        raise bad("jti missing or not a string")
    if not _is_uuid(jti):
        raise bad(f"jti {_show(jti)} is not a UUID in canonical (lowercase 8-4-4-4-12) form")
    iat, exp = claims.get("iat"), claims.get("exp")
    if not _is_number(iat) or not _is_number(exp):
        raise bad("iat or exp missing or not a NumericDate")
    for name, limit in (("title", MAX_TITLE_CHARS), ("description", MAX_DESCRIPTION_CHARS)):
        value = claims.get(name)
        if not isinstance(value, str):
            raise bad(f"{name} missing or not a string")
        if len(value) > limit:
            raise bad(f"{name} is {len(value)} code points, over {limit}")
    case_ref = claims.get("case_ref")
    if "case_ref" in claims and not (
        isinstance(case_ref, str) and len(case_ref) <= MAX_CASE_REF_CHARS
    ):
        raise bad(f"case_ref present but not a string of at most {MAX_CASE_REF_CHARS} code points")
    public_url = claims.get("public_url")
    if not isinstance(public_url, str):
        raise bad("public_url missing or not a string")
    parsed = _parse_uri(public_url)
    if parsed is None or parsed.scheme != "https" or not parsed.host:
        raise bad("public_url is not an https URL")
    upload = claims.get("upload")
    if not isinstance(upload, dict):
        raise bad("upload missing or not an object")
    if not isinstance(upload.get("url"), str):
        raise bad("upload.url missing or not a string")
    protocol = upload.get("protocol")
    if protocol not in ("tus", "put"):
        raise bad(f"upload.protocol {_show(protocol)} is not tus or put")
    recipient = claims.get("recipient")
    if "recipient" in claims and not (isinstance(recipient, str) and _is_age_recipient(recipient)):
        raise bad("recipient present but not an age X25519 recipient")
    if iss != cert.sub:
        raise bad(f"iss {_show(iss)} is not the certificate's sub {_show(cert.sub)}")
    return _RequestClaims(
        iss=iss,
        jti=jti,
        iat=iat,
        exp=exp,
        title=claims["title"],
        description=claims["description"],
        case_ref=case_ref,
        public_url=public_url,
        upload_url=upload["url"],
        upload_protocol=protocol,
        recipient=recipient.lower() if isinstance(recipient, str) else None,
    )


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _is_uuid(value: Any) -> bool:
    """The canonical text form (RFC 9562 section 4: 8-4-4-4-12 hex digits, output
    in lowercase). Any version and variant: the spec asks only for the form, and
    one form per UUID keeps (iss, jti) a faithful replay key."""
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def _is_number(value: Any) -> TypeGuard[int | float]:
    # JSON true/false arrive as bool, which Python counts as int: not a number here.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _exact(value: int | float) -> int | Fraction:
    """A number as an exact value for comparisons that must not round: an int as
    it is (int arithmetic is exact, and much cheaper than Fraction's), a float as
    the Fraction it equals. Ints and Fractions mix exactly."""
    return value if isinstance(value, int) else Fraction(value)


def _number(value: Any) -> float | None:
    """A JSON number as a float (finite: the I-JSON parser saw to that), or None.
    Integers beyond a double's precision round; no limit here sits that close."""
    return float(value) if _is_number(value) else None


# --- age recipients -------------------------------------------------------------


def _is_age_recipient(text: str) -> bool:
    """An age X25519 recipient: Bech32 with HRP ``age``, a 32-byte key, zero padding,
    one case throughout, as Bech32 requires (age and pyrage accept upper case)."""
    try:
        recipient_key(text)
    except RecipientError:
        return False
    return True


# --- window ------------------------------------------------------------------

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)

# Fractional seconds up to this many digits (nanoseconds and then some) are read
# with int(): one Fraction built at once, no Decimal. Longer ones take Decimal.
_FAST_FRACTION_DIGITS = 18


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def parse_rfc3339(text: str) -> int | Fraction:
    """An RFC 3339 date-time with its offset, as exact Unix seconds: an int for
    whole seconds (exact and cheaper than a Fraction), else a Fraction. Fractional
    seconds of any length; ``T``/``Z`` in either case; second 60 (a leap second)
    counts as the first second of the next minute, as Unix time folds it.
    Raises ``ValueError``."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 date-time with an offset: {text[:40]!r}")
    year, month, day, hour, minute, second = map(int, match.group(1, 2, 3, 4, 5, 6))
    if not 1 <= month <= 12:
        raise ValueError(f"month {month}")
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days_in_month = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[month - 1]
    if not 1 <= day <= days_in_month or hour > 23 or minute > 59 or second > 60:
        raise ValueError(f"no such date-time: {text[:40]!r}")
    offset_s = 0
    if match.group(9):
        offset_hour, offset_minute = int(match.group(10)), int(match.group(11))
        if offset_hour > 23 or offset_minute > 59:
            raise ValueError(f"no such offset: {text[:40]!r}")
        offset_s = (offset_hour * 3600 + offset_minute * 60) * (-1 if match.group(9) == "-" else 1)
    days = _days_from_civil(year, month, day)
    whole = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s
    fraction = match.group(7)
    if not fraction:
        return whole
    digits = fraction[1:]
    if len(digits) <= _FAST_FRACTION_DIGITS:  # the usual milli- to nanoseconds, in one Fraction
        scale = 10 ** len(digits)
        return Fraction(whole * scale + int(digits), scale)
    # Decimal, not int(): any number of digits, exactly (int() stops at 4,300).
    return whole + Fraction(Decimal("0" + fraction))


def _check_window(window: Any) -> tuple[str, str, int | Fraction, int | Fraction]:
    if not isinstance(window, dict):
        raise _Reject("bad_window", "window missing or not an object")
    start_text, end_text = window.get("start"), window.get("end")
    if not isinstance(start_text, str) or not isinstance(end_text, str):
        raise _Reject("bad_window", "window start or end missing or not a string")
    try:
        start, end = parse_rfc3339(start_text), parse_rfc3339(end_text)
    except ValueError as exc:
        raise _Reject("bad_window", str(exc)) from None
    if start >= end:
        raise _Reject("bad_window", "window start is not before its end")
    return start_text, end_text, start, end


# --- area --------------------------------------------------------------------


def _check_area(area: Any) -> Area:
    def bad(detail: str) -> _Reject:
        return _Reject("bad_area", detail)

    if not isinstance(area, dict):
        raise bad("area missing or not an object")
    kind, coordinates = area.get("type"), area.get("coordinates")
    if kind == "Point":
        centre = _position(coordinates, allow_altitude=False)
        if centre is None:
            raise bad("coordinates are not [lon, lat] numbers in range")
        radius = _number(area.get("radius_m"))
        if radius is None or not radius > 0:
            raise bad("radius_m missing or not a number > 0")
        return CircleArea(centre, radius)
    if kind == "Polygon":
        if not isinstance(coordinates, list) or len(coordinates) != 1:
            raise bad("a polygon must have exactly one ring")
        positions = coordinates[0]
        if not isinstance(positions, list) or not (
            MIN_RING_POSITIONS <= len(positions) <= MAX_RING_POSITIONS
        ):
            raise bad(f"the ring must have {MIN_RING_POSITIONS} to {MAX_RING_POSITIONS} positions")
        ring = _linear_ring(positions, allow_altitude=False)
        if ring is None:
            raise bad("ring positions are not [lon, lat] numbers in range, or it is not closed")
        if crosses_antimeridian(ring):
            raise bad("the ring crosses ±180° of longitude")
        if not ring_is_simple(ring):
            raise bad("the ring is not simple (edges cross or touch)")
        return PolygonArea.from_ring(ring)
    raise bad(f"unknown area type {_show(kind)}")


# --- URLs and hosts ----------------------------------------------------------

# RFC 3986 character classes (ASCII only: a URI has no other characters).
_UNRESERVED_SUBDELIMS = r"A-Za-z0-9\-._~!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_USERINFO = re.compile(rf"(?:[{_UNRESERVED_SUBDELIMS}:]|{_PCT})*")
_REG_NAME = re.compile(rf"(?:[{_UNRESERVED_SUBDELIMS}]|{_PCT})*")
_PATH = re.compile(rf"(?:[{_UNRESERVED_SUBDELIMS}:@/]|{_PCT})*")
_QUERY = re.compile(rf"(?:[{_UNRESERVED_SUBDELIMS}:@/?]|{_PCT})*")
_PORT = re.compile(r"[0-9]*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class _Uri:
    scheme: str  # lowercase
    userinfo: str | None
    host: str  # as written (IPv6 literal with its brackets)
    port: str | None  # digits as written, or None
    path: str
    query: str | None


def _parse_uri(text: str) -> _Uri | None:
    """An RFC 3986 URI with an authority (``scheme://authority…``), strictly: only
    the characters RFC 3986 allows where it allows them. None if it is not one."""
    scheme, sep, rest = text.partition(":")
    if not sep or not _SCHEME.fullmatch(scheme) or not rest.startswith("//"):
        return None
    rest = rest[2:]
    rest, _, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    if not _PATH.fullmatch(path) or not _QUERY.fullmatch(query) or not _QUERY.fullmatch(fragment):
        return None
    userinfo, at, host_port = authority.rpartition("@")
    if at and not _USERINFO.fullmatch(userinfo):
        return None
    if host_port.startswith("["):
        close = host_port.find("]")
        if close < 0:
            return None
        host, port_part = host_port[: close + 1], host_port[close + 1 :]
        if _normalise_host(host) is None:  # IPv6 only; IPvFuture names nothing we can reach
            return None
    else:
        host, colon, port_text = host_port.partition(":")
        port_part = colon + port_text
        if not _REG_NAME.fullmatch(host):
            return None
    if port_part and (port_part[0] != ":" or not _PORT.fullmatch(port_part[1:])):
        return None
    port = port_part[1:] if port_part else None
    return _Uri(
        scheme.lower(), userinfo if at else None, host, port, path, query if question else None
    )


def _normalise_host(host: str) -> str | None:
    """A host as the spec allows it in ``upload_hosts`` and upload URLs, in one
    normal form for comparison: an IPv4 dotted quad, an IPv6 literal (with or
    without brackets; compressed, no brackets), or a DNS name of LDH labels,
    lowercase, A-labels for internationalised names. None if it is none of these
    (percent-encoding, a zone id, a trailing dot, an all-numeric last label that
    some resolvers would read as an IPv4 address)."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if "%" in host:
            return None
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            return None
    if ":" in host:
        if "%" in host:  # a zone id names an interface of this machine: never an upload host
            return None
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            return None
    if not host.isascii() or len(host) > 253:
        return None
    name = host.lower()
    labels = name.split(".")
    if labels[-1].isdigit():
        try:
            return str(ipaddress.IPv4Address(name))  # strict: four decimal parts, no leading zeros
        except ValueError:
            return None
    for label in labels:
        if not _LABEL.fullmatch(label):
            return None
        if label[2:4] == "--" and not (label.startswith("xn--") and _is_a_label(label)):
            return None  # R-LDH labels other than valid A-labels are reserved (RFC 5890)
    return name


def _is_a_label(label: str) -> bool:
    """``xn--`` + Punycode that decodes to non-ASCII and encodes back to itself.
    (The full IDNA2008 code point rules are the certificate signer's to keep.)"""
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
    except (UnicodeError, ValueError, IndexError):
        return False
    if decoded.isascii():
        return False
    try:
        return decoded.encode("punycode").decode("ascii") == label[4:]
    except UnicodeError:
        return False


@dataclass(frozen=True)
class _Upload:
    normalised: str
    host: str
    port: int | None


@functools.lru_cache(maxsize=64)
def _checked_upload_url(url: str, allowed_hosts: tuple[str, ...], policy: Policy) -> _Upload:
    """``_check_upload_url`` remembered for the last few URLs that passed: an
    agency uploads to the same URL request after request. The check depends on
    its arguments alone, so a remembered answer is the answer; refusals raise
    and are not remembered."""
    return _check_upload_url(url, allowed_hosts, policy)


def _check_upload_url(url: str, allowed_hosts: Sequence[str], policy: Policy) -> _Upload:
    def refuse(detail: str) -> _Reject:
        return _Reject("upload_not_allowed", detail)

    parsed = _parse_uri(url)
    if parsed is None:
        raise refuse("upload.url is not an RFC 3986 URL with a host")
    if parsed.userinfo is not None:
        raise refuse("upload.url has user info")
    host = _normalise_host(parsed.host)
    if host is None:
        raise refuse("upload.url host is not a DNS name (A-labels) or IP literal")
    if parsed.port and int(parsed.port) > 65_535:
        raise refuse("upload.url port is over 65535")
    if host not in allowed_hosts:
        raise refuse(f"upload host {_show(host)} is not in the certificate's upload_hosts")
    insecure_ok = policy.allow_insecure_localhost and host == "127.0.0.1"
    if parsed.scheme != "https" and not (parsed.scheme == "http" and insecure_ok):
        raise refuse(f"upload.url scheme {parsed.scheme!r} is not https")
    host_in_url = f"[{host}]" if ":" in host else host
    port_in_url = f":{parsed.port}" if parsed.port else ""
    query = f"?{parsed.query}" if parsed.query is not None else ""
    normalised = f"{parsed.scheme}://{host_in_url}{port_in_url}{parsed.path}{query}"
    return _Upload(normalised, host, int(parsed.port) if parsed.port else None)


# --- small helpers -----------------------------------------------------------


def _short_string(value: Any, limit: int = MAX_NAME_CHARS) -> str | None:
    return value if isinstance(value, str) and len(value) <= limit else None


def _show(value: Any) -> str:
    """A short printable rendering of an untrusted value for a detail line."""
    text = ascii(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- `edge request check` ----------------------------------------------------


def check_result(verdict: Verdict) -> dict[str, Any]:
    """The object ``edge request check`` prints (cli-and-config.md):
    ``{"verdict", "reason", "location_match", "id"}``; ``id`` is the jti, or null
    when a rejected message had none that could be read."""
    if isinstance(verdict, Accepted):
        return {
            "verdict": "accepted",
            "reason": None,
            "location_match": verdict.location_match,
            "id": verdict.request.jti,
        }
    return {
        "verdict": "rejected",
        "reason": verdict.reason,
        "location_match": None,
        "id": verdict.jti,
    }


def render_check(verdict: Verdict) -> str:
    """``check_result`` as the one JSON line to print; exit status is
    ``check_exit_status``."""
    return json.dumps(check_result(verdict))


def check_exit_status(verdict: Verdict) -> int:
    return 0 if isinstance(verdict, Accepted) else 1


def decode_b64_payload(text: str) -> bytes:
    """Helper for tools fed the vectors file's ``payload_b64`` (standard base64)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64: {exc}") from None
