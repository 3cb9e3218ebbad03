"""Strict compact JWS (RFC 7515) with Ed25519 only, and the I-JSON parser it rests on.

JOSE libraries are lenient where the wire spec is strict (one accepted a header
with ``typ`` twice), so this is a few lines of our own: three unpadded base64url
parts, an I-JSON header (RFC 7493), ``alg`` exactly ``EdDSA`` or ``Ed25519``,
``typ`` exactly as the caller requires, no ``crit``. Signatures are checked with
``cryptography``'s ``Ed25519PublicKey.verify`` and nothing else: no code path
here can be talked into another algorithm, because there is no other.

Parsing and verifying are separate steps on purpose: the wire spec orders its
checks (every header before any signature, a signature before its claims), and
the verifier needs to run them in that order.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

ALLOWED_ALGS = frozenset({"EdDSA", "Ed25519"})  # RFC 8037 and its fully specified name (RFC 9864)
MAX_JSON_DEPTH = 32  # I-JSON lets a receiver refuse deeper nesting; the spec says 32
# I-JSON: no number of greater magnitude than an IEEE 754 double. 309 digits is the
# first integer length beyond it; checking the length first also keeps Python's
# int() from raising on its 4,300-digit limit.
_MAX_INT_DIGITS = 309

_B64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64URL_VALUES = {chr(c): i for i, c in enumerate(_B64URL_ALPHABET)}
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Valid UTF-8 cannot carry a surrogate, so one can only come from a \uD800-\uDFFF
# escape. Text without one needs no string-by-string check (a rare false alarm,
# an escaped backslash before "ud8..", only costs the full check).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JwsError(ValueError):
    """A compact JWS is malformed or has a header the spec refuses (``bad_alg``)."""


class IJsonError(ValueError):
    """Bytes are not an I-JSON text (RFC 7493) within our nesting limit."""


# --- base64url ---------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, as JWS and JWK use it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url: alphabet ``A-Za-z0-9-_`` only, no ``=``, and the
    canonical encoding (unused trailing bits zero, RFC 4648 section 3.5), so one
    byte string has exactly one text form. Raises ``ValueError``."""
    # Deleting the alphabet's bytes leaves nothing only if every character is in
    # it: the same test as the regex [A-Za-z0-9_-]*, several times faster.
    data = text.encode("ascii") if text.isascii() else b"?"
    if data.translate(None, _B64URL_ALPHABET) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    # The last character of a 2- or 3-character group carries 4 or 2 unused bits.
    unused_mask = (0, 0, 0xF, 0x3)[len(text) % 4]
    if unused_mask and _B64URL_VALUES[text[-1]] & unused_mask:
        raise ValueError("non-canonical base64url (trailing bits set)")
    try:  # binascii directly: base64.urlsafe_b64decode is two wrappers around it
        padded = data.translate(_URLSAFE_TO_STANDARD) + b"=" * (-len(text) % 4)
        return binascii.a2b_base64(padded)
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - ruled out above
        raise ValueError("not unpadded base64url") from exc


# --- I-JSON ------------------------------------------------------------------


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # dict() and len() run in C: a member name given twice makes the dict shorter.
    # Only then is the list walked, to name the first name seen again.
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise IJsonError(f"duplicate member name {name[:40]!r}")
            seen.add(name)
    return result


def _reject_constant(name: str) -> Any:
    raise IJsonError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf: beyond a double, not I-JSON
        raise IJsonError("number beyond the range of a double")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) >= _MAX_INT_DIGITS:
        raise IJsonError("number beyond the range of a double")
    return int(text)


def _check_tree(value: Any, max_depth: int, *, strings: bool) -> None:
    """Nesting at most max_depth; if ``strings``, no lone surrogate in any string
    or member name either. Iterative, so hostile nesting cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise IJsonError(f"nesting deeper than {max_depth}")
            for name, member in item.items():
                if strings and _SURROGATE.search(name):
                    raise IJsonError("lone surrogate in a member name")
                stack.append((member, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                raise IJsonError(f"nesting deeper than {max_depth}")
            stack.extend((member, depth + 1) for member in item)
        elif strings and isinstance(item, str) and _SURROGATE.search(item):
            raise IJsonError("lone surrogate in a string")


# One decoder for every call: json.loads() with hooks would build a decoder and
# its scanner anew each time (the json module shares its own default decoder
# between threads the same way; the scanner keeps no state between calls).
_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs_without_duplicates,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
    parse_int=_bounded_int,
)


def loads_ijson(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parses an I-JSON text: UTF-8 (no BOM), no duplicate member names, no
    NaN/Infinity, no number beyond a double, no lone surrogates (escaped ones
    included), nesting at most ``max_depth`` (the top value counts as 1).
    Raises ``IJsonError``."""
    try:
        text = data.decode("utf-8")  # strict: encoded surrogates and overlongs fail here
    except UnicodeDecodeError as exc:
        raise IJsonError("not UTF-8") from exc
    try:
        if text.startswith("\ufeff"):  # as json.loads() says it (the decoder would not)
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _DECODER.decode(text)
    except IJsonError:
        raise
    except RecursionError as exc:  # nesting far past max_depth: json's C scanner gives up
        raise IJsonError(f"nesting deeper than {max_depth}") from exc
    except ValueError as exc:  # JSONDecodeError included (a BOM too)
        raise IJsonError(f"not JSON: {exc}") from exc
    strings = _SURROGATE_ESCAPE.search(text) is not None
    # Fewer opening brackets than the limit cannot nest past it: skip the walk.
    if strings or text.count("[") + text.count("{") > max_depth:
        _check_tree(value, max_depth, strings=strings)
    return value


# --- compact JWS -------------------------------------------------------------


@dataclass(frozen=True)
class CompactJws:
    """A compact JWS whose structure and header passed; signature not yet checked."""

    header: dict[str, Any]
    payload: bytes  # the decoded JWS payload (our claims, still unparsed)
    signing_input: bytes  # ASCII(BASE64URL(header) '.' BASE64URL(payload))
    signature: bytes

    def verify(self, key: Ed25519PublicKey) -> bool:
        """True iff the signature is a valid Ed25519 signature by ``key`` (RFC 8032
        as OpenSSL checks it)."""
        try:
            key.verify(self.signature, self.signing_input)
        except InvalidSignature:
            return False
        return True

    def claims(self) -> dict[str, Any]:
        """The payload as an I-JSON object. Raises ``IJsonError``."""
        value = loads_ijson(self.payload)
        if not isinstance(value, dict):
            raise IJsonError("claims are not a JSON object")
        return value


def parse_compact(token: str, *, typ: str) -> CompactJws:
    """Structure and header checks of one compact JWS, strictly: three parts of
    unpadded base64url, the header an I-JSON object with ``alg`` exactly
    ``EdDSA`` or ``Ed25519``, ``typ`` exactly ``typ`` (case included) and no
    ``crit`` member. Other header members are ignored. Raises ``JwsError``."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JwsError(f"{len(parts)} parts, not 3")
    try:
        header_bytes, payload, signature = (b64url_decode(part) for part in parts)
    except ValueError as exc:
        raise JwsError(str(exc)) from exc
    header = dict(_checked_header(header_bytes, typ))  # a copy: the caller's to keep
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return CompactJws(header, payload, signing_input, signature)


@functools.lru_cache(maxsize=32)
def _checked_header(header_bytes: bytes, typ: str) -> dict[str, Any]:
    """The header checks of ``parse_compact``, remembered for the last few headers
    that passed: a publisher sends the same header bytes with every token. They
    depend on the bytes and ``typ`` alone; failures raise and are not remembered.
    The dict returned is shared: never change it."""
    try:
        header = loads_ijson(header_bytes)
    except IJsonError as exc:
        raise JwsError(f"header: {exc}") from exc
    if not isinstance(header, dict):
        raise JwsError("header is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGS:
        raise JwsError(f"alg {_show(alg)} is not EdDSA or Ed25519")
    if header.get("typ") != typ:
        raise JwsError(f"typ {_show(header.get('typ'))} is not {typ!r}")
    if "crit" in header:
        raise JwsError("header has crit")
    return header


def sign_compact(header: Mapping[str, Any], claims: Any, private_key: Ed25519PrivateKey) -> str:
    """Signs ``claims`` (any JSON value, usually a dict) with Ed25519 under
    ``header`` (must say ``alg`` EdDSA or Ed25519) and returns the compact JWS.
    Serialised as compact UTF-8 JSON; NaN/Infinity refused."""
    if header.get("alg") not in ALLOWED_ALGS:
        raise ValueError("header alg must be EdDSA or Ed25519")
    header_b64 = b64url_encode(_compact_json(dict(header)))
    claims_b64 = b64url_encode(_compact_json(claims))
    return sign_raw(header_b64, claims_b64, private_key)


def sign_raw(header_b64: str, payload_b64: str, private_key: Ed25519PrivateKey) -> str:
    """Signs already-encoded parts as they are (tests use it to sign malformed
    headers or claims: duplicate members, non-objects)."""
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    return f"{header_b64}.{payload_b64}.{b64url_encode(private_key.sign(signing_input))}"


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _show(value: Any) -> str:
    """A short, printable rendering of an untrusted value for error details."""
    text = ascii(value)
    return text if len(text) <= 40 else text[:37] + "..."
