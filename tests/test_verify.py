"""The verifier on malformed messages the vectors do not list, one fault at a time.

Every payload is signed for real (tests/signing.py) so that each case reaches
the check it is about; the expected code is the spec's, from its table.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pyrage import x25519

from edge.share.geo import CircleArea, LonLat, PolygonArea
from edge.share.verify import (
    MAX_PAYLOAD_BYTES,
    REASONS,
    Accepted,
    Location,
    Policy,
    Rejected,
    Trust,
    check_exit_status,
    check_request,
    check_result,
    forget_certificates,
    parse_rfc3339,
    render_check,
)
from signing import (
    AGENCY_ID,
    AGENCY_KEY,
    DELETE,
    LOCATION,
    NOW_S,
    PLATFORM_KEY,
    ROGUE_KEY,
    box,
    circle,
    make_cert,
    make_payload,
    make_request,
    payload_of,
    public_b64,
    request_claims,
    rfc3339,
    sign_text,
    trust_for,
)

LAT, LON = LOCATION.lat, LOCATION.lon
CERT_HEADER_TEXT = '{"alg":"EdDSA","typ":"agency-cert+jwt"}'
REQUEST_HEADER_TEXT = '{"alg":"EdDSA","typ":"assist-request+jwt"}'


def judge(
    payload: bytes,
    *,
    now_s: float = NOW_S,
    trust: Trust | None = None,
    policy: Policy | None = None,
    location: Location = LOCATION,
) -> Accepted | Rejected:
    return check_request(
        payload,
        now_s=now_s,
        trust=trust or trust_for(PLATFORM_KEY),
        policy=policy or Policy(),
        location=location,
    )


def outcome(payload: bytes, **kwargs: Any) -> str:
    verdict = judge(payload, **kwargs)
    return "accepted" if isinstance(verdict, Accepted) else verdict.reason


def request(**overrides: Any) -> bytes:
    return make_payload(request_overrides=overrides)


def cert(**overrides: Any) -> bytes:
    return make_payload(cert_overrides=overrides)


def raw_request(claims_text: str, header_text: str = REQUEST_HEADER_TEXT) -> bytes:
    """A payload whose request claims are exactly this JSON text, validly signed."""
    return payload_of(make_cert(), sign_text(header_text, claims_text, AGENCY_KEY))


def raw_cert(claims_text: str, header_text: str = CERT_HEADER_TEXT) -> bytes:
    return payload_of(sign_text(header_text, claims_text, PLATFORM_KEY), make_request())


def replace_part(token: str, index: int, new: str) -> str:
    parts = token.split(".")
    parts[index] = new
    return ".".join(parts)


def _to_length_1_mod_4(part: str) -> str:
    while len(part) % 4 != 1:
        part += "A"
    return part


def valid_claims_text() -> str:
    return json.dumps(request_claims())


# --- the valid baseline ----------------------------------------------------------


def test_a_valid_request_is_accepted_with_everything_later_stages_need() -> None:
    claims = request_claims()
    verdict = judge(make_payload(request_overrides=claims))
    assert isinstance(verdict, Accepted)
    assert verdict.location_match is True
    got = verdict.request
    assert (got.iss, got.jti) == (AGENCY_ID, claims["jti"])
    assert got.replay_key == (AGENCY_ID, claims["jti"])
    assert got.agency_id == AGENCY_ID
    assert (got.agency_name, got.agency_kind, got.platform_id) == (
        "Example Police Department",
        "police",
        "example-platform",
    )
    assert (got.iat_s, got.exp_s) == (claims["iat"], claims["exp"])
    assert got.title == claims["title"] and got.description == claims["description"]
    assert got.case_ref == "2026-123456"
    assert got.public_url == claims["public_url"]
    assert got.area == CircleArea(LonLat(LON, LAT), 500.0)
    assert got.centre == LonLat(LON, LAT)
    assert got.window_start == claims["window"]["start"]
    assert got.window_start_ms == int((NOW_S - 2400) * 1000)
    assert got.window_end_ms == int((NOW_S - 600) * 1000)
    assert got.upload_url == "https://evidence.example.gov/files/"
    assert (got.upload_host, got.upload_port, got.upload_protocol) == (
        "evidence.example.gov",
        None,
        "tus",
    )
    assert got.recipient is None
    assert got.upload_hosts == ("evidence.example.gov",)


def test_optional_claims_may_be_absent() -> None:
    verdict = judge(request(case_ref=DELETE, recipient=DELETE))
    assert isinstance(verdict, Accepted)
    assert verdict.request.case_ref is None and verdict.request.recipient is None


def test_camera_outside_the_area_is_accepted_without_a_location_match() -> None:
    verdict = judge(request(area=circle(LAT + 0.01, LON, 500)))
    assert isinstance(verdict, Accepted) and verdict.location_match is False


def test_the_same_payload_judged_later_expires() -> None:
    payload = make_payload()
    assert outcome(payload) == "accepted"
    assert outcome(payload, now_s=NOW_S + 3 * 86_400) == "expired"


# --- too_large, bad_payload ------------------------------------------------------


def _padded_to(size: int) -> bytes:
    base = make_payload()
    filler = size - len(base) - len(', "pad": ""')
    padded = base[:-1] + b', "pad": "' + b"x" * filler + b'"}'
    assert len(padded) == size
    return padded


def test_size_limit_is_65536_bytes_inclusive() -> None:
    assert outcome(_padded_to(MAX_PAYLOAD_BYTES)) == "accepted"
    assert outcome(_padded_to(MAX_PAYLOAD_BYTES + 1)) == "too_large"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"null",
        b'"cert"',
        b"[]",
        b"\xef\xbb\xbf{}",  # a BOM
        b'{"cert": "a", "request": 5}',
        b'{"cert": null, "request": "a"}',
        b'{"request": "a"}',
        b'{"cert": "a", "cert": "a", "request": "a"}',  # duplicate member
        b'{"cert": "a\xff", "request": "a"}',  # not UTF-8
        b'{"cert": "a\xed\xa0\x80", "request": "a"}',  # a surrogate encoded in UTF-8
        b'{"cert": "a", "request": "a", "note": NaN}',
        b'{"cert": "a", "request": "a", "note": -Infinity}',
        b'{"cert": "a", "request": "a", "note": 1e400}',
        b'{"cert": "a", "request": "a", "note": "\\udc00"}',  # lone surrogate, escaped
        b'{"cert": "a", "request": "a", "\\ud800": 1}',  # ... in a member name
        b'{"cert": "a", "request": "a"} x',
        b"[" * 30_000 + b"]" * 30_000,  # far past the nesting limit
    ],
    ids=lambda p: ascii(p[:40]),
)
def test_not_an_ijson_object_with_two_strings_is_bad_payload(payload: bytes) -> None:
    verdict = judge(payload)
    assert isinstance(verdict, Rejected) and verdict.reason == "bad_payload"
    assert verdict.iss is None and verdict.jti is None


def test_outer_members_are_ignored_but_must_be_ijson_within_32_levels() -> None:
    def with_note(note: str) -> bytes:
        return make_payload()[:-1] + b', "note": ' + note.encode() + b"}"

    # The outer object is level 1: 31 nested arrays make 32 levels, one more is too deep.
    assert outcome(with_note("[" * 31 + "]" * 31)) == "accepted"
    assert outcome(with_note("[" * 32 + "]" * 32)) == "bad_payload"
    assert outcome(with_note('"\\ud83d\\ude00"')) == "accepted"  # a surrogate *pair* is fine
    assert outcome(with_note("12345678901234567890123")) == "accepted"


# --- bad_alg ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        '{"alg":"none","typ":"assist-request+jwt"}',
        '{"alg":"eddsa","typ":"assist-request+jwt"}',
        '{"alg":"ES256","typ":"assist-request+jwt"}',
        '{"alg":["EdDSA"],"typ":"assist-request+jwt"}',
        '{"typ":"assist-request+jwt"}',
        '{"alg":"EdDSA"}',
        '{"alg":"EdDSA","typ":"agency-cert+jwt"}',
        '{"alg":"EdDSA","typ":"assist-request+jwt "}',
        '{"alg":"EdDSA","typ":"assist-request+jwt","typ":"assist-request+jwt"}',
        '{"alg":"EdDSA","alg":"EdDSA","typ":"assist-request+jwt"}',
        '{"alg":"EdDSA","typ":"assist-request+jwt","crit":[]}',
        '{"alg":"EdDSA","typ":"assist-request+jwt","x":NaN}',
        '{"alg":"EdDSA","typ":"assist-request+jwt","x":"\\ud800"}',
        '["EdDSA"]',
        "not json",
    ],
)
def test_request_header_not_exactly_as_the_spec_says_is_bad_alg(header: str) -> None:
    assert outcome(raw_request(valid_claims_text(), header)) == "bad_alg"


def test_header_members_beyond_alg_and_typ_are_ignored() -> None:
    header = '{"alg":"Ed25519","typ":"assist-request+jwt","kid":"k1","jku":"https://x"}'
    assert outcome(raw_request(valid_claims_text(), header)) == "accepted"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t + "=",  # padding
        lambda t: replace_part(t, 0, t.split(".")[0] + "=="),
        lambda t: t + ".",  # four parts
        lambda t: t.rsplit(".", 1)[0],  # two parts
        lambda t: t.replace("-", "+").replace("_", "/") if ("-" in t or "_" in t) else t + "+",
        lambda t: " " + t,
        lambda t: t.replace(".", ".\n", 1),
        lambda t: replace_part(t, 2, t.split(".")[2][:-1] + "B"),  # non-canonical: trailing bits
        lambda t: replace_part(t, 1, _to_length_1_mod_4(t.split(".")[1])),  # impossible length
        lambda t: "",
    ],
)
def test_jws_not_three_parts_of_unpadded_base64url_is_bad_alg(mangle: Any) -> None:
    token = make_request()
    mangled = mangle(token)
    assert mangled != token
    assert outcome(payload_of(make_cert(), mangled)) == "bad_alg"
    assert outcome(payload_of(mangle(make_cert()), token)) == "bad_alg"


def test_cert_header_typ_must_be_exact() -> None:
    for typ in ("JWT", "Agency-Cert+JWT", "assist-request+jwt"):
        payload = make_payload(cert_header={"alg": "EdDSA", "typ": typ})
        assert outcome(payload) == "bad_alg", typ


# --- bad_cert --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"iss": DELETE},
        {"iss": 5},
        {"sub": DELETE},
        {"sub": ["us-wa-example-pd"]},
        {"name": DELETE},
        {"name": "n" * 201},
        {"kind": "sheriff"},
        {"kind": "Police"},
        {"kind": None},
        {"jwk": DELETE},
        {"jwk": "6Jf8HSM1IJS9XuGeOutWZoqy6vBmvQ13Zy2PIguj914"},
        {"jwk.kty": "EC"},
        {"jwk.crv": "X25519"},
        {"jwk.crv": "ed25519"},
        {"jwk.x": public_b64(AGENCY_KEY) + "="},
        {"jwk.x": public_b64(AGENCY_KEY) + "AA"},  # 33 bytes
        {"jwk.x": 5},
        {"jurisdiction": DELETE},
        {"jurisdiction": {"type": "Point", "coordinates": [LON, LAT]}},
        {"jurisdiction": {"type": "Polygon", "coordinates": []}},
        {"jurisdiction": {"type": "MultiPolygon", "coordinates": []}},
        {"jurisdiction": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}},
        {"jurisdiction": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}},
        {"jurisdiction": {"type": "Polygon", "coordinates": [[[0, 91], [1, 0], [1, 1], [0, 91]]]}},
        {"upload_hosts": DELETE},
        {"upload_hosts": "evidence.example.gov"},
        {"upload_hosts": []},
        {"upload_hosts": [5]},
        {"upload_hosts": ["evidence.example.gov", ""]},
        {"upload_hosts": ["https://evidence.example.gov"]},
        {"upload_hosts": ["evidence.example.gov:443"]},
        {"upload_hosts": ["evidence.example.gov."]},
        {"upload_hosts": ["evidence..example.gov"]},
        {"upload_hosts": ["-evidence.example.gov"]},
        {"upload_hosts": ["evidence_1.example.gov"]},
        {"upload_hosts": ["bücher.example"]},  # a U-label, not an A-label
        {"upload_hosts": ["xn--zz.example"]},  # not valid Punycode
        {"upload_hosts": ["ab--cd.example"]},  # a reserved (R-LDH) label
        {"upload_hosts": ["1.2.3"]},  # some resolvers read this as an IPv4 address
        {"upload_hosts": ["127.000.000.001"]},
        {"upload_hosts": ["fe80::1%eth0"]},
        {"iat": DELETE},
        {"iat": "1796039940"},
        {"exp": True},
        {"exp": NOW_S - 60},  # exp == iat
    ],
    ids=repr,
)
def test_certificate_claim_missing_mistyped_or_out_of_bounds_is_bad_cert(
    overrides: dict[str, Any],
) -> None:
    assert outcome(cert(**overrides)) == "bad_cert"


@pytest.mark.parametrize(
    "claims_text",
    [
        "[1, 2]",
        '"claims"',
        "{",
        json.dumps({"iss": "a"})[:-1] + ', "iss": "a"}',
    ],
)
def test_certificate_claims_not_an_ijson_object_is_bad_cert(claims_text: str) -> None:
    assert outcome(raw_cert(claims_text)) == "bad_cert"


def test_certificate_signed_by_an_untrusted_key_is_bad_cert_whoever_else_is_trusted() -> None:
    assert outcome(make_payload(ROGUE_KEY)) == "bad_cert"
    assert outcome(make_payload(), trust=Trust(())) == "bad_cert"
    # Any one of several trusted keys will do.
    assert outcome(make_payload(ROGUE_KEY), trust=trust_for(PLATFORM_KEY, ROGUE_KEY)) == "accepted"


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": "é" * 200},  # lengths count code points, not bytes
        {"name": "😀" * 200},  # ... nor UTF-16 units
        {"kind": "fire"},
        {"kind": "other"},
        {"jwk.kid": "agency-2026", "jwk.use": "sig"},
        {"upload_hosts": ["EVIDENCE.example.GOV"]},
        {"jurisdiction": {"type": "MultiPolygon", "coordinates": [
            box(0, 0, 1)["coordinates"], box(LAT, LON, 0.5)["coordinates"]]}},
        {"jurisdiction": {"type": "Polygon", "coordinates": [
            [[p[0], p[1], 100.0] for p in box(LAT, LON, 0.5)["coordinates"][0]]]}},
        {"iat": NOW_S - 0.5, "exp": NOW_S + 0.25},  # NumericDate may be fractional
        {"extra": {"anything": [1, 2, 3]}},
    ],
    ids=repr,
)
def test_certificate_variants_within_the_spec_are_accepted(overrides: dict[str, Any]) -> None:
    assert outcome(cert(**overrides)) == "accepted"


# --- cert_expired ----------------------------------------------------------------------------


def test_certificate_exp_is_strict_and_iat_has_300_s_of_skew() -> None:
    assert outcome(cert(exp=NOW_S)) == "cert_expired"
    assert outcome(cert(exp=NOW_S + 0.001)) == "accepted"
    assert outcome(cert(iat=NOW_S + 300)) == "accepted"
    assert outcome(cert(iat=NOW_S + 300.5)) == "cert_expired"
    assert outcome(cert(iat=NOW_S + 300), policy=Policy(skew_s=0)) == "cert_expired"


# --- bad_signature ---------------------------------------------------------------------------


def test_request_not_signed_by_the_certified_agency_key_is_bad_signature() -> None:
    assert outcome(make_payload(agency_key=ROGUE_KEY, cert_overrides={
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": public_b64(AGENCY_KEY)}})) == "bad_signature"
    # The platform's own key is not the agency's.
    good_cert = make_cert()
    assert outcome(payload_of(good_cert, make_request(PLATFORM_KEY))) == "bad_signature"
    token = make_request()
    assert outcome(payload_of(good_cert, replace_part(token, 2, ""))) == "bad_signature"
    assert outcome(payload_of(good_cert, replace_part(token, 2, "AAAA"))) == "bad_signature"
    # A header changed after signing: the signature covers it.
    header = '{"alg":"Ed25519","typ":"assist-request+jwt"}'
    resigned_header = sign_text(header, "{}", AGENCY_KEY).split(".")[0]
    assert outcome(payload_of(good_cert, replace_part(token, 0, resigned_header))) == (
        "bad_signature"
    )


# --- bad_request -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"iss": DELETE},
        {"iss": "US-WA-EXAMPLE-PD"},
        {"iss": None},
        {"jti": DELETE},
        {"jti": 42},
        {"jti": "BB6A6037-5625-4926-BBCF-B378D9912819"},  # upper case is not the canonical form
        {"jti": "{bb6a6037-5625-4926-bbcf-b378d9912819}"},
        {"jti": "urn:uuid:bb6a6037-5625-4926-bbcf-b378d9912819"},
        {"jti": "bb6a603756254926bbcfb378d9912819"},
        {"jti": "bb6a6037-5625-4926-bbcf-b378d991281"},
        {"jti": "bb6a6037-5625-4926-bbcf-b378d9912819 "},
        {"jti": "bb6a6037-5625-4926-bbcf-b378d991281g"},
        {"jti": "bb6a6037-5625-4926-bbcf-b378d９912819"},  # a full-width digit
        {"iat": DELETE},
        {"iat": "1796039970"},
        {"iat": True},
        {"exp": None},
        {"title": DELETE},
        {"title": "t" * 121},
        {"title": ["t"]},
        {"description": DELETE},
        {"description": "d" * 2001},
        {"case_ref": None},
        {"case_ref": 123456},
        {"case_ref": "c" * 65},
        {"public_url": DELETE},
        {"public_url": "http://platform.example.org/r/1"},
        {"public_url": "https:platform.example.org/r/1"},
        {"public_url": "https:///r/1"},
        {"public_url": "https://platform.example.org/r 1"},
        {"public_url": "https://platform.example.org/r/\u00e9"},
        {"public_url": "platform.example.org/r/1"},
        {"upload": DELETE},
        {"upload": "https://evidence.example.gov/files/"},
        {"upload.url": DELETE},
        {"upload.url": 5},
        {"upload.protocol": DELETE},
        {"upload.protocol": "TUS"},
        {"upload.protocol": "post"},
        {"recipient": None},
        {"recipient": ""},
        {"recipient": "age1"},
        {"recipient": 5},
    ],
    ids=repr,
)
def test_request_claim_missing_mistyped_or_too_long_is_bad_request(
    overrides: dict[str, Any],
) -> None:
    assert outcome(request(**overrides)) == "bad_request"


@pytest.mark.parametrize(
    "overrides",
    [
        {"title": "t" * 120, "description": "d" * 2000, "case_ref": "c" * 64},
        {"title": "😀" * 120, "description": "é" * 2000, "case_ref": "日" * 64},
        {"title": ""},
        {"jti": "00000000-0000-0000-0000-000000000000"},
        {"public_url": "HTTPS://Platform.Example.org:8443/r/1?x=1#top"},
        {"public_url": "https://[2001:db8::1]/r/1"},
        {"iat": NOW_S - 30.5, "exp": NOW_S + 0.5},
        {"upload.protocol": "put"},
        {"upload.extra": True},
        {"extra": None},
    ],
    ids=repr,
)
def test_request_variants_within_the_spec_are_accepted(overrides: dict[str, Any]) -> None:
    assert outcome(request(**overrides)) == "accepted"


def _real_recipient() -> str:
    return str(x25519.Identity.generate().to_public())


def test_recipient_must_be_an_age_x25519_recipient() -> None:
    recipient = _real_recipient()
    verdict = judge(request(recipient=recipient))
    assert isinstance(verdict, Accepted) and verdict.request.recipient == recipient
    verdict = judge(request(recipient=recipient.upper()))  # Bech32 allows one case throughout
    assert isinstance(verdict, Accepted) and verdict.request.recipient == recipient
    flipped = recipient[:-1] + ("q" if recipient[-1] != "q" else "p")
    mixed = recipient[:10] + recipient[10:].upper()
    scalar = str(x25519.Identity.generate())  # the *identity*: AGE-SECRET-KEY-1…
    for bad in (flipped, mixed, recipient + "q", recipient[:-1], scalar, "age1" + "q" * 58):
        assert outcome(request(recipient=bad)) == "bad_request", bad


@pytest.mark.parametrize(
    "claims_text",
    [
        "[1, 2, 3]",
        "null",
        "{",
        '{"title": NaN}',
        '{"title": "\\ud800"}',
        '{"iss": "a", "iss": "a"}',
    ],
)
def test_request_claims_not_an_ijson_object_is_bad_request(claims_text: str) -> None:
    assert outcome(raw_request(claims_text)) == "bad_request"


def test_duplicate_claim_is_bad_request_even_with_equal_values() -> None:
    text = valid_claims_text()
    assert outcome(raw_request(text)) == "accepted"
    duplicated = text[:-1] + ', "title": "Package theft on Elm St"}'
    assert outcome(raw_request(duplicated)) == "bad_request"


def test_claims_nested_past_32_levels_are_bad_request() -> None:
    text = valid_claims_text()
    # Claims object is level 1; "x": 31 arrays deep reaches level 32.
    assert outcome(raw_request(text[:-1] + ', "x": ' + "[" * 31 + "]" * 31 + "}")) == "accepted"
    assert outcome(raw_request(text[:-1] + ', "x": ' + "[" * 32 + "]" * 32 + "}")) == (
        "bad_request"
    )


# --- expired ----------------------------------------------------------------------------------


def test_request_lifetime_rules() -> None:
    assert outcome(request(exp=NOW_S)) == "expired"
    assert outcome(request(exp=NOW_S + 0.001)) == "accepted"
    assert outcome(request(iat=NOW_S + 301)) == "expired"
    iat = NOW_S - 30
    assert outcome(request(iat=iat, exp=iat + 30 * 86_400)) == "accepted"
    assert outcome(request(iat=iat, exp=iat + 30 * 86_400 + 1)) == "expired"


# --- bad_window, window_too_long, future_window ------------------------------------------


@pytest.mark.parametrize(
    "window",
    [
        DELETE,
        None,
        [rfc3339(NOW_S - 900), rfc3339(NOW_S - 600)],
        {"start": rfc3339(NOW_S - 900)},
        {"end": rfc3339(NOW_S - 900)},
        {"start": NOW_S - 900, "end": NOW_S - 600},
        {"start": "2026-11-30 11:20:00Z", "end": "2026-11-30T11:50:00Z"},  # space separator
        {"start": "2026-11-30T11:20:00", "end": "2026-11-30T11:50:00Z"},  # no offset
        {"start": "2026-11-30T11:20:00+0100", "end": "2026-11-30T11:50:00Z"},
        {"start": "2026-11-30T11:20Z", "end": "2026-11-30T11:50:00Z"},
        {"start": "2026-11-30T11:20:00.Z", "end": "2026-11-30T11:50:00Z"},
        {"start": "2026-11-31T11:20:00Z", "end": "2026-11-30T11:50:00Z"},
        {"start": "2026-11-30T24:00:00Z", "end": "2026-11-30T11:50:00Z"},
        {"start": "2026-11-30T11:20:00+24:00", "end": "2026-11-30T11:50:00Z"},
        {"start": "２０２６-11-30T11:20:00Z", "end": "2026-11-30T11:50:00Z"},
        {"start": "2026-11-30T11:20:00Z ", "end": "2026-11-30T11:50:00Z"},
        {"start": "2026-11-30T11:50:00Z", "end": "2026-11-30T11:50:00Z"},  # empty
        {"start": "2026-11-30T11:50:00.0002Z", "end": "2026-11-30T11:50:00.0001Z"},
    ],
    ids=repr,
)
def test_window_not_two_rfc3339_times_in_order_is_bad_window(window: Any) -> None:
    assert outcome(request(window=window)) == "bad_window"


@pytest.mark.parametrize(
    "window",
    [
        {"start": "2026-11-30T12:20:00+01:00", "end": "2026-11-30T03:50:00-08:00"},
        {"start": "2026-11-30T11:20:00-00:00", "end": "2026-11-30T11:50:00z"},
        {"start": "2026-11-30T11:20:00." + "1" * 5000 + "Z", "end": "2026-11-30T11:50:00Z"},
        {"start": "2026-11-30T11:50:00.0001Z", "end": "2026-11-30T11:50:00.0002Z"},
        {"start": "2026-11-29T23:59:60Z", "end": "2026-11-30T11:50:00Z"},  # a leap second
        {"start": "2026-11-30T11:20:00Z", "end": "2026-11-30T11:50:00Z", "note": 1},
    ],
    ids=lambda w: repr(w)[:80],
)
def test_window_forms_rfc3339_allows_are_accepted(window: dict[str, Any]) -> None:
    assert outcome(request(window=window)) == "accepted"


def test_window_in_ms_covers_the_exact_window() -> None:
    verdict = judge(request(window={
        "start": "2026-11-30T11:50:00.0004Z", "end": "2026-11-30T11:50:00.0016Z"}))
    assert isinstance(verdict, Accepted)
    assert verdict.request.window_start_ms == 1_796_039_400_000
    assert verdict.request.window_end_ms == 1_796_039_400_002


def test_window_length_limit_is_exact_and_from_the_policy() -> None:
    end = NOW_S - 600
    assert outcome(request(window={"start": rfc3339(end - 43_200), "end": rfc3339(end)})) == (
        "accepted"
    )
    assert outcome(request(window={"start": rfc3339(end - 43_200.001), "end": rfc3339(end)})) == (
        "window_too_long"
    )
    two_hours = request(window={"start": rfc3339(end - 7200), "end": rfc3339(end)})
    assert outcome(two_hours, policy=Policy(max_window_s=3600)) == "window_too_long"


def test_window_may_end_no_later_than_iat_plus_skew() -> None:
    iat = NOW_S - 30
    def window_ending(end: float) -> bytes:
        return request(iat=iat, window={"start": rfc3339(end - 600), "end": rfc3339(end)})
    assert outcome(window_ending(iat + 300)) == "accepted"
    assert outcome(window_ending(iat + 300.001)) == "future_window"
    assert outcome(window_ending(iat + 300), policy=Policy(skew_s=0)) == "future_window"


@pytest.mark.parametrize(
    ("text", "unix_s"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2026-11-30T12:00:00Z", 1_796_040_000),
        ("2026-11-30t13:30:00+01:30", 1_796_040_000),
        ("2024-02-29T00:00:00Z", 1_709_164_800),
        ("2000-02-29T00:00:00Z", 951_782_400),
        ("1969-12-31T23:59:59.5Z", -0.5),
        ("0000-01-01T00:00:00Z", -62_167_219_200),
        ("9999-12-31T23:59:59Z", 253_402_300_799),
        ("2016-12-31T23:59:60Z", 1_483_228_800),
    ],
)
def test_rfc3339_to_unix_seconds(text: str, unix_s: float) -> None:
    assert parse_rfc3339(text) == unix_s


@pytest.mark.parametrize(
    "text", ["2023-02-29T00:00:00Z", "1900-02-29T00:00:00Z", "2026-04-31T00:00:00Z",
             "2026-00-10T00:00:00Z", "2026-01-10T00:60:00Z", "2026-01-10T00:00:61Z",
             "2026-01-10T00:00:00+00:60", "26-01-10T00:00:00Z", "2026-01-10T00:00:00ZZ"],
)
def test_rfc3339_rejects_impossible_date_times(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


# --- bad_area, area_too_large --------------------------------------------------------------


def square(lat: float, lon: float, half_deg: float) -> list[list[float]]:
    return box(lat, lon, half_deg)["coordinates"][0]


def polygon(ring: list[list[float]]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [ring]}


S = 0.002  # a square of ±0.002° around the camera: about 300 m x 450 m
W, E, SO, N = LON - S, LON + S, LAT - S, LAT + S


@pytest.mark.parametrize(
    "area",
    [
        DELETE,
        None,
        "here",
        [LON, LAT],
        {"coordinates": [LON, LAT], "radius_m": 100},
        {"type": "point", "coordinates": [LON, LAT], "radius_m": 100},
        {"type": "Circle", "coordinates": [LON, LAT], "radius_m": 100},
        {"type": "MultiPolygon", "coordinates": [[square(LAT, LON, S)]]},
        {"type": "Point", "coordinates": [LON, LAT]},
        {"type": "Point", "coordinates": [LON, LAT], "radius_m": "100"},
        {"type": "Point", "coordinates": [LON, LAT], "radius_m": True},
        {"type": "Point", "coordinates": [LON, LAT], "radius_m": -1},
        {"type": "Point", "coordinates": [LON, LAT], "radius_m": None},
        {"type": "Point", "coordinates": [LAT], "radius_m": 100},
        {"type": "Point", "coordinates": [LON, LAT, 0], "radius_m": 100},
        {"type": "Point", "coordinates": [str(LON), LAT], "radius_m": 100},
        {"type": "Point", "coordinates": [180.0001, LAT], "radius_m": 100},
        {"type": "Point", "coordinates": [LON, -90.5], "radius_m": 100},
        {"type": "Point", "coordinates": {"lon": LON, "lat": LAT}, "radius_m": 100},
        {"type": "Polygon", "coordinates": square(LAT, LON, S)},  # the ring not wrapped
        {"type": "Polygon", "coordinates": []},
        polygon(square(LAT, LON, S)[:4]),  # not closed
        polygon([[W, SO], [E, SO], [W, SO]]),  # three positions
        polygon([[W, SO], [E, N], [E, SO], [W, N], [W, SO]]),  # a bow tie
        polygon([[W, SO], [LON, LAT], [E, SO], [E, N], [LON, LAT], [W, N], [W, SO]]),  # touching
        polygon([[W, SO], [E, SO], [LON, SO], [LON, N], [W, SO]]),  # runs back over itself
        polygon([[W, SO], [LON, SO], [E, SO], [W, SO]]),  # all on one line
        polygon([[W, SO, 0], [E, SO, 0], [E, N, 0], [W, N, 0], [W, SO, 0]]),
        polygon([[W, SO], [E, SO], [E, N], [W, N], [W, True]]),
        {"type": "Polygon", "coordinates": [square(LAT, LON, S), square(LAT, LON, S / 2)]},
    ],
    ids=lambda a: repr(a)[:70],
)
def test_area_not_a_valid_circle_or_one_ring_polygon_is_bad_area(area: Any) -> None:
    assert outcome(request(area=area)) == "bad_area"


def _regular_polygon(n: int, radius_deg: float) -> list[list[float]]:
    import math

    angles = [2 * math.pi * i / n for i in range(n)]
    ring = [[LON + radius_deg * math.cos(a), LAT + radius_deg * math.sin(a)] for a in angles]
    return [*ring, ring[0]]


def test_ring_holds_4_to_256_positions() -> None:
    assert outcome(request(area=polygon(_regular_polygon(255, 0.002)))) == "accepted"
    assert outcome(request(area=polygon(_regular_polygon(256, 0.002)))) == "bad_area"
    assert outcome(request(area=polygon(_regular_polygon(3, 0.002)))) == "accepted"


def test_repeated_consecutive_positions_do_not_make_a_ring_non_simple() -> None:
    ring = [[W, SO], [E, SO], [E, SO], [E, N], [W, N], [W, SO]]
    assert outcome(request(area=polygon(ring))) == "accepted"


def test_polygons_near_the_antimeridian() -> None:
    # A camera in Fiji, its agency's jurisdiction on both sides of the line, as RFC 7946
    # says to write it (a MultiPolygon split at 180).
    here = Location(lat=-16.5, lon=179.999)
    jurisdiction = {"type": "MultiPolygon", "coordinates": [
        [[[179, -17], [180, -17], [180, -16], [179, -16], [179, -17]]],
        [[[-180, -17], [-179, -17], [-179, -16], [-180, -16], [-180, -17]]],
    ]}

    def judged(area: dict[str, Any]) -> Accepted | Rejected:
        payload = make_payload(cert_overrides={"jurisdiction": jurisdiction},
                               request_overrides={"area": area}, location=here)
        return judge(payload, location=here)

    west_of_line = polygon([[179.997, -16.501], [180, -16.501], [180, -16.499],
                            [179.997, -16.499], [179.997, -16.501]])
    verdict = judged(west_of_line)
    assert isinstance(verdict, Accepted) and verdict.location_match
    across = polygon([[179.999, -16.501], [-179.999, -16.501], [-179.999, -16.499],
                      [179.999, -16.499], [179.999, -16.501]])
    rejected = judged(across)
    assert isinstance(rejected, Rejected) and rejected.reason == "bad_area"
    # A circle is a distance: it may straddle the line, and matches across it.
    verdict = judged(circle(-16.5, -179.9995, 300))
    assert isinstance(verdict, Accepted) and verdict.location_match


def test_area_limits_come_from_the_policy() -> None:
    assert outcome(request(area=circle(LAT, LON, 650))) == "accepted"
    assert outcome(request(area=circle(LAT, LON, 650.5))) == "area_too_large"
    assert outcome(request(area=circle(LAT, LON, 300)), policy=Policy(max_radius_m=200)) == (
        "area_too_large"
    )
    # ±0.002° is about 445 m x 300 m = 0.13 km², under π·650² = 1.33 km²...
    small = request(area=polygon(square(LAT, LON, S)))
    assert outcome(small) == "accepted"
    # ...but over π·200² = 0.126 km²? No: 0.1337 km² is just over it.
    assert outcome(small, policy=Policy(max_radius_m=200)) == "area_too_large"
    assert outcome(small, policy=Policy(max_radius_m=215)) == "accepted"


def test_a_polygon_area_is_typed_with_its_centre_and_size() -> None:
    verdict = judge(request(area=polygon(square(LAT, LON, S))))
    assert isinstance(verdict, Accepted)
    area = verdict.request.area
    assert isinstance(area, PolygonArea)
    assert area.centre.lon == pytest.approx(LON) and area.centre.lat == pytest.approx(LAT)
    assert area.area_m2 == pytest.approx(133_700, rel=0.01)
    assert area.to_geojson() == polygon(square(LAT, LON, S))


# --- outside_jurisdiction -----------------------------------------------------------------------


def test_jurisdiction_containment() -> None:
    inner = box(LAT, LON, 0.1)
    # The area's vertex lies exactly on the jurisdiction's boundary: inside.
    on_edge = polygon([[LON - 0.1, LAT], [LON, LAT], [LON, LAT + 0.001], [LON - 0.1, LAT]])
    payload = make_payload(cert_overrides={"jurisdiction": inner},
                           request_overrides={"area": on_edge})
    assert outcome(payload) == "accepted"
    poking_out = polygon([[LON - 0.1001, LAT], [LON, LAT], [LON, LAT + 0.001], [LON - 0.1001, LAT]])
    payload = make_payload(cert_overrides={"jurisdiction": inner},
                           request_overrides={"area": poking_out})
    assert outcome(payload) == "outside_jurisdiction"
    # A circle is judged by its centre alone (areas are tiny beside jurisdictions).
    payload = make_payload(cert_overrides={"jurisdiction": inner},
                           request_overrides={"area": circle(LAT + 0.0999, LON, 650)})
    assert outcome(payload) == "accepted"
    # A hole around the camera (a city that is not the county's) is outside.
    with_hole = {"type": "Polygon", "coordinates": [square(LAT, LON, 0.5), square(LAT, LON, 0.01)]}
    payload = make_payload(cert_overrides={"jurisdiction": with_hole})
    assert outcome(payload) == "outside_jurisdiction"
    # ...but the hole's own boundary still belongs to the jurisdiction.
    payload = make_payload(cert_overrides={"jurisdiction": with_hole},
                           request_overrides={"area": circle(LAT + 0.01, LON, 100)})
    assert outcome(payload) == "accepted"


# --- upload_not_allowed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("http://evidence.example.gov/files/", None),
        ("ftp://evidence.example.gov/files/", None),
        ("https://user@evidence.example.gov/files/", None),
        ("https://user:secret@evidence.example.gov/files/", None),
        ("https://@evidence.example.gov/files/", None),
        ("https://evidence.example.gov@evil.example.com/files/", None),
        ("https://evidence.example.gov\\@evil.example.com/files/", None),
        ("https://evil.example.com#@evidence.example.gov/", None),
        ("https://evil.example.com?@evidence.example.gov/", None),
        ("https://evidence.example.gov.evil.example.com/files/", None),
        ("https://evidence.example.gov./files/", None),
        ("https://evidence%2Eexample.gov/files/", None),
        ("https://evidence.example.gov:99999/files/", None),
        ("https://evidence.example.gov:x/files/", None),
        ("https://evidence.example.gov/fi les/", None),
        ("https://evidence.example.gov/files/\u00e9", None),
        ("https:///files/", None),
        ("https:evidence.example.gov/files/", None),
        ("//evidence.example.gov/files/", None),
        ("evidence.example.gov", None),
        ("", None),
        ("https://bücher.example/files/", ["xn--bcher-kva.example"]),  # not RFC 3986: an IRI
        ("https://[2001:db8::2]/files/", ["2001:db8::1"]),
        ("https://[fe80::1%25eth0]/files/", ["fe80::1"]),
        ("https://127.1/files/", ["127.0.0.1"]),
        ("https://2130706433/files/", ["127.0.0.1"]),
        ("http://127.0.0.1:8080/files/", ["127.0.0.1"]),  # the test-only rule is off
    ],
)
def test_upload_url_not_https_to_a_certified_host_is_refused(
    url: str, hosts: list[str] | None
) -> None:
    cert_overrides = {"upload_hosts": hosts} if hosts else None
    payload = make_payload(cert_overrides=cert_overrides, request_overrides={"upload.url": url})
    assert outcome(payload) == "upload_not_allowed"


@pytest.mark.parametrize(
    ("url", "hosts", "upload_url", "host", "port"),
    [
        ("https://EVIDENCE.Example.gov:8443/files/", ["evidence.example.gov"],
         "https://evidence.example.gov:8443/files/", "evidence.example.gov", 8443),
        ("HTTPS://evidence.example.gov/files/?batch=7#part", ["evidence.example.gov"],
         "https://evidence.example.gov/files/?batch=7", "evidence.example.gov", None),
        ("https://evidence.example.gov", ["Evidence.Example.Gov"],
         "https://evidence.example.gov", "evidence.example.gov", None),
        ("https://XN--BCHER-KVA.example/u/", ["xn--bcher-kva.example"],
         "https://xn--bcher-kva.example/u/", "xn--bcher-kva.example", None),
        ("https://[2001:DB8:0::1]:8443/x", ["2001:db8::1"],
         "https://[2001:db8::1]:8443/x", "2001:db8::1", 8443),
        ("https://[2001:db8::1]/x", ["[2001:db8:0:0::1]"],
         "https://[2001:db8::1]/x", "2001:db8::1", None),
        ("https://192.0.2.7/x", ["example.org", "192.0.2.7"],
         "https://192.0.2.7/x", "192.0.2.7", None),
    ],
)
def test_upload_host_compared_case_insensitively_port_ignored(
    url: str, hosts: list[str], upload_url: str, host: str, port: int | None
) -> None:
    payload = make_payload(cert_overrides={"upload_hosts": hosts},
                           request_overrides={"upload.url": url})
    verdict = judge(payload)
    assert isinstance(verdict, Accepted), verdict
    assert verdict.request.upload_url_as_sent == url
    assert (verdict.request.upload_url, verdict.request.upload_host) == (upload_url, host)
    assert verdict.request.upload_port == port


def test_insecure_localhost_only_when_configured_and_certified() -> None:
    insecure = Policy(allow_insecure_localhost=True)

    def payload(url: str, hosts: list[str]) -> bytes:
        return make_payload(cert_overrides={"upload_hosts": hosts},
                            request_overrides={"upload.url": url})

    local = payload("http://127.0.0.1:8080/files/", ["127.0.0.1"])
    assert outcome(local, policy=insecure) == "accepted"
    assert outcome(local) == "upload_not_allowed"
    assert outcome(payload("http://127.0.0.1:8080/files/", ["localhost"]), policy=insecure) == (
        "upload_not_allowed"
    )
    assert outcome(payload("http://localhost:8080/files/", ["localhost"]), policy=insecure) == (
        "upload_not_allowed"
    )
    assert outcome(payload("http://[::1]:8080/files/", ["::1"]), policy=insecure) == (
        "upload_not_allowed"
    )
    assert outcome(payload("http://evidence.example.gov/", ["evidence.example.gov", "127.0.0.1"]),
                   policy=insecure) == "upload_not_allowed"
    assert outcome(payload("https://127.0.0.1:8443/files/", ["127.0.0.1"])) == "accepted"


# --- the order of the checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload_args", "expected"),
    [
        (dict(platform_key=ROGUE_KEY, request_header={"alg": "none", "typ": "assist-request+jwt"}),
         "bad_alg"),
        (dict(cert_header={"alg": "HS256", "typ": "agency-cert+jwt"},
              request_header={"alg": "none", "typ": "assist-request+jwt"}), "bad_alg"),
        (dict(platform_key=ROGUE_KEY, cert_overrides={"exp": NOW_S - 1}), "bad_cert"),
        (dict(agency_key=ROGUE_KEY, cert_overrides={"exp": NOW_S - 1,
              "jwk": {"kty": "OKP", "crv": "Ed25519", "x": public_b64(AGENCY_KEY)}}),
         "cert_expired"),
        (dict(agency_key=ROGUE_KEY, request_overrides={"title": "t" * 500},
              cert_overrides={"jwk.x": public_b64(AGENCY_KEY)}),
         "bad_signature"),
        (dict(request_overrides={"title": "t" * 500, "exp": NOW_S - 1}), "bad_request"),
        (dict(request_overrides={"exp": NOW_S - 1, "window": "x"}), "expired"),
        (dict(request_overrides={"window": "x", "area": "x"}), "bad_window"),
        (dict(request_overrides={"window": {"start": rfc3339(NOW_S - 86_400),
                                            "end": rfc3339(NOW_S + 3600)}}), "window_too_long"),
        (dict(request_overrides={"window": {"start": rfc3339(NOW_S),
                                            "end": rfc3339(NOW_S + 3600)}, "area": "x"}),
         "future_window"),
        (dict(request_overrides={"area": "x", "upload.url": "http://x"}), "bad_area"),
        (dict(request_overrides={"area": circle(LAT + 5, LON, 5000)}), "area_too_large"),
        (dict(request_overrides={"area": circle(LAT + 5, LON, 500), "upload.url": "http://x"}),
         "outside_jurisdiction"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_first_failing_check_in_the_spec_order_names_the_reason(
    payload_args: dict[str, Any], expected: str
) -> None:
    assert outcome(make_payload(**payload_args)) == expected


# --- what a rejection carries, and the CLI's rendering --------------------------------------------


def test_rejection_carries_the_claimed_iss_and_jti_when_readable() -> None:
    claims = request_claims()
    verdict = judge(make_payload(ROGUE_KEY, request_overrides={"jti": claims["jti"]}))
    assert isinstance(verdict, Rejected) and verdict.reason == "bad_cert"
    assert (verdict.iss, verdict.jti) == (AGENCY_ID, claims["jti"])
    verdict = judge(request(jti="request-42", iss="x" * 500))
    assert isinstance(verdict, Rejected) and verdict.reason == "bad_request"
    assert (verdict.iss, verdict.jti) == (None, None)
    verdict = judge(b"{not json")
    assert isinstance(verdict, Rejected) and (verdict.iss, verdict.jti) == (None, None)
    assert verdict.reason in REASONS and verdict.detail


def test_check_json_is_exactly_the_cli_spec_object() -> None:
    claims = request_claims()
    accepted = judge(make_payload(request_overrides=claims))
    assert json.loads(render_check(accepted)) == {
        "verdict": "accepted", "reason": None, "location_match": True, "id": claims["jti"]}
    assert check_exit_status(accepted) == 0
    elsewhere = judge(request(area=circle(LAT + 0.1, LON, 500)))
    assert check_result(elsewhere)["location_match"] is False
    rejected = judge(make_payload(request_overrides={**claims, "exp": NOW_S - 1}))
    assert json.loads(render_check(rejected)) == {
        "verdict": "rejected", "reason": "expired", "location_match": None, "id": claims["jti"]}
    assert check_exit_status(rejected) == 1
    broken = judge(b"[]")
    assert check_result(broken) == {
        "verdict": "rejected", "reason": "bad_payload", "location_match": None, "id": None}
    assert list(check_result(broken)) == ["verdict", "reason", "location_match", "id"]


# --- construction of the inputs ------------------------------------------------------------------


def test_trust_from_config_names_the_bad_entry() -> None:
    good = public_b64(PLATFORM_KEY)
    assert Trust.from_config([good, good + "="]).platform_keys[0] == Trust.from_config(
        [good]).platform_keys[0]
    for bad, message in [
        ("not base64!", "trust.platform_keys[1]: not base64url"),
        (good[:-3], "trust.platform_keys[1]: decodes to 30 bytes"),
        (good[:-2], "trust.platform_keys[1]: not base64url"),
        (5, "trust.platform_keys[1]: must be a string"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            Trust.from_config([good, bad])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        Trust((b"short",))


def test_policy_and_location_refuse_nonsense() -> None:
    for bad in ({"max_window_s": 0}, {"max_radius_m": -1}, {"skew_s": -1},
                {"max_radius_m": float("nan")}):
        with pytest.raises(ValueError):
            Policy(**bad)
    with pytest.raises(ValueError):
        Location(lat=91, lon=0)
    with pytest.raises(ValueError):
        Location(lat=0, lon=-181)


def test_remembered_certificates_never_change_an_answer() -> None:
    payload = make_payload()
    assert outcome(payload) == "accepted"  # the certificate is now remembered...
    assert outcome(payload, trust=trust_for(ROGUE_KEY)) == "bad_cert"  # ...for this trust only
    assert outcome(payload, now_s=NOW_S + 366 * 86_400) == "cert_expired"  # time is judged anew
    assert outcome(payload) == "accepted"


def test_a_remembered_certificate_leaves_the_request_checks_in_spec_order() -> None:
    cert = make_cert()
    assert outcome(payload_of(cert, make_request())) == "accepted"  # remembered from here on
    bad_header = sign_text('{"alg":"none","typ":"assist-request+jwt"}', "{}", AGENCY_KEY)
    assert outcome(payload_of(cert, bad_header)) == "bad_alg"
    assert outcome(payload_of(cert, make_request(ROGUE_KEY))) == "bad_signature"
    assert outcome(payload_of(cert, make_request(request_overrides={"iss": "other"}))) == (
        "bad_request"
    )
    assert outcome(payload_of(cert, make_request())) == "accepted"


def test_another_certificate_is_never_answered_from_the_memory() -> None:
    cert = make_cert()
    assert outcome(payload_of(cert, make_request())) == "accepted"
    # The same agency and key, certified for somewhere else: its own jurisdiction counts.
    elsewhere = make_cert(cert_overrides={"jurisdiction": box(LAT + 5, LON, 0.5)})
    assert outcome(payload_of(elsewhere, make_request())) == "outside_jurisdiction"
    # The same claims signed by a key nobody trusts: a different token, checked in full.
    assert outcome(payload_of(make_cert(ROGUE_KEY), make_request())) == "bad_cert"
    # The remembered token with its signature part cut: no longer the same token.
    header, claims, _signature = cert.split(".")
    assert outcome(payload_of(f"{header}.{claims}.", make_request())) == "bad_cert"
    assert outcome(payload_of(f"{header}.{claims}", make_request())) == "bad_alg"


def test_a_failed_certificate_is_not_remembered_and_a_changed_trust_is_a_new_key() -> None:
    forget_certificates()
    cert = make_cert()
    assert outcome(payload_of(cert, make_request()), trust=trust_for(ROGUE_KEY)) == "bad_cert"
    assert outcome(payload_of(cert, make_request())) == "accepted"
    # Trust reloaded with other keys (a config change): the certificate is checked again.
    assert outcome(payload_of(cert, make_request()), trust=trust_for(ROGUE_KEY)) == "bad_cert"
    both = trust_for(ROGUE_KEY, PLATFORM_KEY)
    assert outcome(payload_of(cert, make_request()), trust=both) == "accepted"
    assert outcome(payload_of(cert, make_request()), trust=trust_for(ROGUE_KEY)) == "bad_cert"


def test_the_certificate_memory_is_bounded_and_keeps_answering() -> None:
    from edge.share import verify

    forget_certificates()
    certs = [make_cert(cert_overrides={"name": f"Agency {i}"}) for i in range(20)]
    for _ in range(2):
        for cert in certs:
            assert outcome(payload_of(cert, make_request())) == "accepted"
    assert len(verify._CERTS._certs) == 16  # private, but the bound is the point here


def test_window_limits_stay_exact_with_fractional_seconds_and_float_policies() -> None:
    end = NOW_S - 600

    def window(length_s: float) -> bytes:
        return request(window={"start": rfc3339(end - length_s), "end": rfc3339(end)})

    policy = Policy(max_window_s=3600.5)
    assert outcome(window(3600.5), policy=policy) == "accepted"
    assert outcome(window(3600.501), policy=policy) == "window_too_long"
    iat = int(NOW_S) - 30  # 11:59:30Z
    # The float 0.1 is 0.1000000000000000055511151231257827...: compared exactly.
    for end_text, expected in (("11:59:30.1Z", "accepted"),
                               ("11:59:30.1000000000000000055Z", "accepted"),
                               ("11:59:30.1000000000000000056Z", "future_window")):
        payload = request(iat=iat, window={"start": "2026-11-30T11:50:00Z",
                                           "end": f"2026-11-30T{end_text}"})
        assert outcome(payload, policy=Policy(skew_s=0.1)) == expected, end_text
    assert parse_rfc3339("2026-11-30T12:00:00Z") == 1_796_040_000
    assert parse_rfc3339("2026-11-30T12:00:00.100Z") * 10 == 17_960_400_001


def test_a_remembered_upload_url_is_judged_anew_for_other_hosts_or_policies() -> None:
    url = "http://127.0.0.1:8080/files/"
    local = make_cert(cert_overrides={"upload_hosts": ["127.0.0.1"]})
    payload = payload_of(local, make_request(request_overrides={"upload.url": url}))
    insecure_ok = Policy(allow_insecure_localhost=True)
    assert outcome(payload, policy=insecure_ok) == "accepted"  # remembered from here on
    assert outcome(payload) == "upload_not_allowed"  # a camera in service refuses http
    other_host = make_cert(cert_overrides={"upload_hosts": ["127.0.0.2"]})
    payload = payload_of(other_host, make_request(request_overrides={"upload.url": url}))
    assert outcome(payload, policy=insecure_ok) == "upload_not_allowed"


def test_rfc3339_fractions_of_any_length_are_exact() -> None:
    from fractions import Fraction

    for digits in ("5", "123", "1" * 18, "1" * 19, "9" * 40):
        expected = Fraction(int(digits), 10 ** len(digits))
        assert parse_rfc3339(f"1970-01-01T00:00:00.{digits}Z") == expected
        assert parse_rfc3339(f"1969-12-31T23:59:59.{digits}Z") == expected - 1
