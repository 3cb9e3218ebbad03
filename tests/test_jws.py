"""Strict compact JWS and I-JSON: the parser the verifier stands on."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.share.jws import (
    IJsonError,
    JwsError,
    b64url_decode,
    b64url_encode,
    loads_ijson,
    parse_compact,
    sign_compact,
)
from signing import AGENCY_KEY, PLATFORM_KEY, public_raw, sign_text

TYP = "clip-manifest+jwt"
HEADER = {"alg": "EdDSA", "typ": TYP}


def agency_public() -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_raw(AGENCY_KEY))


def test_sign_then_parse_round_trip_verifies_only_under_the_signing_key() -> None:
    claims = {"jti": "x", "n": 1, "s": "é😀", "nested": {"a": [1, 2.5, None, True]}}
    token = sign_compact(HEADER, claims, AGENCY_KEY)
    jws = parse_compact(token, typ=TYP)
    assert jws.header == HEADER
    assert jws.claims() == claims
    assert jws.verify(agency_public())
    assert not jws.verify(Ed25519PublicKey.from_public_bytes(public_raw(PLATFORM_KEY)))
    # Compact, UTF-8 claims: what the manifest's readers will hash and parse.
    assert jws.payload == json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode()


def test_sign_compact_refuses_other_algorithms_and_nan() -> None:
    with pytest.raises(ValueError):
        sign_compact({"alg": "HS256", "typ": TYP}, {}, AGENCY_KEY)
    with pytest.raises(ValueError):
        sign_compact(HEADER, {"x": float("nan")}, AGENCY_KEY)


def test_any_change_to_signed_parts_fails_verification() -> None:
    token = sign_compact(HEADER, {"a": 1}, AGENCY_KEY)
    header, payload, signature = token.split(".")
    other_payload = b64url_encode(b'{"a":2}')
    other_header = b64url_encode(b'{"alg":"Ed25519","typ":"clip-manifest+jwt"}')
    forgeries = (f"{header}.{other_payload}.{signature}", f"{other_header}.{payload}.{signature}")
    for forged in forgeries:
        assert not parse_compact(forged, typ=TYP).verify(agency_public())
    flipped = bytearray(b64url_decode(signature))
    flipped[0] ^= 1
    tampered = f"{header}.{payload}.{b64url_encode(bytes(flipped))}"
    assert not parse_compact(tampered, typ=TYP).verify(agency_public())
    for short in (b"", b"\0" * 63, b"\0" * 65):
        jws = parse_compact(f"{header}.{payload}.{b64url_encode(short)}", typ=TYP)
        assert not jws.verify(agency_public())


@pytest.mark.parametrize(
    ("text", "data"),
    [("", b""), ("AA", b"\0"), ("AAA", b"\0\0"), ("AAAA", b"\0\0\0"), ("-_8", b"\xfb\xff")],
)
def test_b64url_decodes_canonical_unpadded_text(text: str, data: bytes) -> None:
    assert b64url_decode(text) == data
    assert b64url_encode(data) == text


@pytest.mark.parametrize(
    "text", ["A", "AA=", "AA==", "+/8", "AB", "AAB", "A A", "AA\n", "ÀA", "AAAAA"]
)
def test_b64url_refuses_padding_other_alphabets_and_non_canonical_bits(text: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(text)


@pytest.mark.parametrize(
    ("header_json", "why"),
    [
        ('{"alg":"EdDSA","typ":"clip-manifest+jwt","typ":"clip-manifest+jwt"}', "duplicate"),
        ('{"alg":"EdDSA","typ":"clip-manifest+jwt","typ":"JWT"}', "duplicate"),
        ('{"alg":"none","typ":"clip-manifest+jwt"}', "alg"),
        ('{"alg":"EdDSA ","typ":"clip-manifest+jwt"}', "alg"),
        ('{"alg":null,"typ":"clip-manifest+jwt"}', "alg"),
        ('{"alg":"EdDSA","typ":"Clip-Manifest+JWT"}', "typ"),
        ('{"alg":"EdDSA","typ":null}', "typ"),
        ('{"alg":"EdDSA","typ":"clip-manifest+jwt","crit":["b64"],"b64":false}', "crit"),
        ('{"alg":"EdDSA","typ":"clip-manifest+jwt","x":1e999}', "double"),
        ('{"alg":"EdDSA","typ":"clip-manifest+jwt"} []', "JSON"),
        ('"EdDSA"', "object"),
    ],
)
def test_header_must_be_an_exact_ijson_object(header_json: str, why: str) -> None:
    token = sign_text(header_json, "{}", AGENCY_KEY)
    with pytest.raises(JwsError, match=why):
        parse_compact(token, typ=TYP)


def test_parts_must_be_three_unpadded_base64url() -> None:
    token = sign_compact(HEADER, {}, AGENCY_KEY)
    broken = (token + "=", token + ".", token.rsplit(".", 1)[0], "", "..", token.replace(".", ".."))
    for bad in broken:
        with pytest.raises(JwsError):
            parse_compact(bad, typ=TYP)


def test_a_remembered_header_passes_only_for_its_typ_and_is_the_caller_s_own_copy() -> None:
    token = sign_compact(HEADER, {}, AGENCY_KEY)
    first = parse_compact(token, typ=TYP)  # the header is remembered from here on
    first.header["typ"] = "changed by a caller"
    assert parse_compact(token, typ=TYP).header == HEADER
    with pytest.raises(JwsError, match="typ"):
        parse_compact(token, typ="assist-request+jwt")
    # The remembered header does not spare the other parts their checks.
    header, payload, signature = token.split(".")
    for bad in (f"{header}.{payload}=.{signature}", f"{header}.{payload}.{signature[:-1]}!",
                f"{header}.{payload}"):
        with pytest.raises(JwsError):
            parse_compact(bad, typ=TYP)


@pytest.mark.parametrize(
    ("text", "ok"),
    [("A-_A" * 300, True), ("A-_A" * 299 + "A+_A", False), ("A-_A" * 299 + "A-_\0", False),
     ("A-_A" * 299 + "é-_A", False), ("A.AA", False), ("AAA-" * 300 + "A", False)],
)
def test_b64url_checks_every_character_of_long_text(text: str, ok: bool) -> None:
    if ok:
        assert b64url_encode(b64url_decode(text)) == text
    else:
        with pytest.raises(ValueError):
            b64url_decode(text)


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"{}", {}),
        (b' {"a": [1, -2.5e3, "x", null, false]} ', {"a": [1, -2500.0, "x", None, False]}),
        (b'"\\ud83d\\ude00"', "😀"),  # an escaped surrogate pair is one code point
        ("\"é\"".encode(), "é"),
        (b"1" * 308, int("1" * 308)),
        (b"1.7976931348623157e308", 1.7976931348623157e308),
    ],
)
def test_ijson_accepts(data: bytes, value: object) -> None:
    assert loads_ijson(data) == value


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1, "a": 1}',
        b'{"a": {"b": 1, "b": 2}}',
        b"NaN",
        b"[Infinity]",
        b"[-Infinity]",
        b"[1e309]",
        b"[" + b"9" * 309 + b"]",
        b"[" + b"9" * 5000 + b"]",  # past Python's own int() limit too
        b'"\\ud800"',
        b'"\\udc00\\ud800"',  # a pair in the wrong order is two lone ones
        b'{"\\udfff": 1}',
        b'"\xed\xa0\x80"',  # a surrogate encoded in UTF-8 (CESU-8)
        b'"\xc0\xaf"',  # an overlong encoding
        b'"\xff"',
        b"\xef\xbb\xbf{}",
        "{}".encode("utf-16"),
        b"",
        b"{} {}",
        b"{'a': 1}",
        b"[1,]",
    ],
)
def test_ijson_refuses(data: bytes) -> None:
    with pytest.raises(IJsonError):
        loads_ijson(data)


def test_ijson_nesting_limit_counts_the_top_value() -> None:
    assert loads_ijson(b"[" * 32 + b"]" * 32) is not None
    with pytest.raises(IJsonError, match="nesting"):
        loads_ijson(b"[" * 33 + b"]" * 33)
    with pytest.raises(IJsonError, match="nesting"):
        loads_ijson(b'{"a":' * 33 + b"1" + b"}" * 33)
    # Far deeper than Python's recursion limit: refused, not a crash.
    with pytest.raises(IJsonError, match="nesting"):
        loads_ijson(b"[" * 100_000 + b"]" * 100_000)
    assert loads_ijson(b"[" * 5 + b"]" * 5, max_depth=5) == [[[[[]]]]]
