"""The delivery package: names, the age-encrypted clip, and the signed manifest.

The manifest is verified with joserfc, a JOSE library other than the code that
signs it (edge.share.jws over `cryptography`), the way an agency would.
The encrypted clip is opened with the real `age` command-line tool.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pyrage
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import OKPKey

from edge.share import manifest as m

# joserfc flags "EdDSA" as superseded by RFC 9864's "Ed25519"; the spec asks for "EdDSA".
pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")

REQUESTED = m.Window("2024-05-01T11:50:00-07:00", "2024-05-01T12:10:00-07:00")
APPROVED = m.Window("2024-05-01T18:55:00Z", "2024-05-01T19:05:00Z")


def _claims(key: Ed25519PrivateKey, clip: m.FileDigest, **changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "request_id": "6f1c2a7e-3b4d-4c5e-8f90-1a2b3c4d5e6f",
        "issuer": "us-wa-seattle-pd",
        "device_key": key.public_key(),
        "window_requested": REQUESTED,
        "window_approved": APPROVED,
        "window_delivered": m.Window.from_ms(1714589699_250, 1714590301_000),
        "clock_synced": True,
        "clip": clip,
        "approved_at_s": 1714600000,
        "issued_at_s": 1714600042,
    }
    args.update(changes)
    return m.manifest_claims(**args)


def test_delivery_ids_are_fresh_uuids_and_name_the_files() -> None:
    ids = {m.new_delivery_id() for _ in range(100)}
    assert len(ids) == 100
    d = ids.pop()
    assert str(uuid.UUID(d)) == d and uuid.UUID(d).version == 4
    assert m.clip_file_name(d, encrypted=False) == f"{d}.mp4"
    assert m.clip_file_name(d, encrypted=True) == f"{d}.mp4.age"
    assert m.manifest_file_name(d) == f"{d}.manifest.jws"
    with pytest.raises(ValueError):
        m.clip_file_name("../../etc/passwd", encrypted=False)
    with pytest.raises(ValueError):
        m.manifest_file_name(d.upper())  # not the canonical text form


def test_manifest_verifies_with_another_jose_library_under_its_device_key() -> None:
    key = Ed25519PrivateKey.generate()
    d = m.new_delivery_id()
    clip = m.digest_clip(io.BytesIO(b"fmp4 bytes" * 1000), delivery_id=d)
    token = m.sign_manifest(_claims(key, clip), key)

    # An agency reads the key from the manifest itself, then checks it is a camera it knows.
    unverified = json.loads(_b64decode(token.split(".")[1]))
    verified = jws.deserialize_compact(
        token, OKPKey.import_key(unverified["device"]), algorithms=["EdDSA"]
    )
    assert verified.headers() == {"alg": "EdDSA", "typ": "clip-manifest+jwt"}
    claims = json.loads(verified.payload)
    assert list(claims) == [
        "jti", "iss", "device", "window_requested", "window_approved",
        "window_delivered", "clock_synced", "file", "approved_at", "iat",
    ]  # fmt: skip
    assert claims["jti"] == "6f1c2a7e-3b4d-4c5e-8f90-1a2b3c4d5e6f"
    assert claims["iss"] == "us-wa-seattle-pd"
    assert claims["device"]["kty"] == "OKP" and claims["device"]["crv"] == "Ed25519"
    # The request's window is carried exactly as the request wrote it.
    assert claims["window_requested"] == {
        "start": "2024-05-01T11:50:00-07:00",
        "end": "2024-05-01T12:10:00-07:00",
    }
    assert claims["window_approved"] == {
        "start": "2024-05-01T18:55:00Z",
        "end": "2024-05-01T19:05:00Z",
    }
    assert claims["window_delivered"] == {
        "start": "2024-05-01T18:54:59.250Z",
        "end": "2024-05-01T19:05:01.000Z",
    }
    assert claims["clock_synced"] is True
    assert claims["file"] == {
        "name": f"{d}.mp4",
        "size": 10_000,
        "sha256": hashlib.sha256(b"fmp4 bytes" * 1000).hexdigest(),
    }
    assert claims["approved_at"] == 1714600000 and claims["iat"] == 1714600042

    # A manifest altered in transit, or signed by another key, does not verify.
    header, payload, signature = token.split(".")
    forged = json.loads(_b64decode(payload))
    forged["file"]["sha256"] = "0" * 64
    forged_token = f"{header}.{_b64encode(json.dumps(forged).encode())}.{signature}"
    with pytest.raises(BadSignatureError):
        jws.deserialize_compact(
            forged_token, OKPKey.import_key(unverified["device"]), algorithms=["EdDSA"]
        )
    other = OKPKey.import_key(m.device_jwk(Ed25519PrivateKey.generate().public_key()))
    with pytest.raises(BadSignatureError):
        jws.deserialize_compact(token, other, algorithms=["EdDSA"])


def test_manifest_refuses_an_approved_window_wider_than_the_request() -> None:
    key = Ed25519PrivateKey.generate()
    clip = m.FileDigest(f"{m.new_delivery_id()}.mp4", 1, "a" * 64)
    wider = m.Window("2024-05-01T18:49:59Z", "2024-05-01T19:05:00Z")
    with pytest.raises(ValueError, match="approved window"):
        _claims(key, clip, window_approved=wider)
    with pytest.raises(ValueError, match="SHA-256"):
        _claims(key, m.FileDigest(clip.name, 1, "A" * 64))
    with pytest.raises(ValueError):
        _claims(key, clip, approved_at_s=1.5)


@pytest.mark.parametrize(
    "text",
    ["2024-05-01 12:00:00Z", "2024-05-01T12:00:00", "2024-05-01T25:00:00Z", "yesterday", ""],
)
def test_windows_take_only_rfc3339_with_an_offset(text: str) -> None:
    with pytest.raises(ValueError):
        m.Window(text, "2024-05-02T00:00:00Z")


def test_windows_accept_what_rfc3339_allows() -> None:
    w = m.Window("2024-05-01t12:00:00.123456789z", "2024-05-01T12:00:01+00:00")
    assert w.start == "2024-05-01t12:00:00.123456789z"  # kept verbatim
    with pytest.raises(ValueError, match="starts after"):
        m.Window("2024-05-01T12:00:01Z", "2024-05-01T12:00:00Z")


def test_clip_is_encrypted_to_the_recipient_alone_and_the_digest_is_of_the_ciphertext(
    tmp_path: Path,
) -> None:
    agency = pyrage.x25519.Identity.generate()
    stranger = pyrage.x25519.Identity.generate()
    plaintext = os.urandom(3 * 1024 * 1024 + 17)
    d = m.new_delivery_id()
    out_path = tmp_path / m.clip_file_name(d, encrypted=True)
    with out_path.open("wb") as out:
        digest = m.encrypt_clip(io.BytesIO(plaintext), str(agency.to_public()), out, delivery_id=d)

    ciphertext = out_path.read_bytes()
    assert digest == m.FileDigest(
        f"{d}.mp4.age", len(ciphertext), hashlib.sha256(ciphertext).hexdigest()
    )
    assert plaintext[:4096] not in ciphertext

    # The agency opens it with the standard age tool; nobody else can.
    age = shutil.which("age")
    assert age is not None, "the age command-line tool is a test dependency (Debian: age)"
    identity_file = tmp_path / "agency.key"
    identity_file.write_text(str(agency) + "\n")
    opened = subprocess.run(
        [age, "--decrypt", "-i", str(identity_file), str(out_path)],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert opened == plaintext
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(ciphertext, [stranger])


@pytest.mark.parametrize("recipient", ["", "age1notavalidrecipient", "ssh-ed25519 AAAA", "AGE1"])
def test_a_bad_recipient_is_refused_before_anything_is_written(recipient: str) -> None:
    out = io.BytesIO()
    with pytest.raises(ValueError, match="recipient"):
        m.encrypt_clip(io.BytesIO(b"clip"), recipient, out, delivery_id=m.new_delivery_id())
    assert out.getvalue() == b""


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_sealed_clip_reads_back_from_any_offset_and_stops_cleanly(tmp_path: Path) -> None:
    device = pyrage.x25519.Identity.generate()
    plaintext = os.urandom(2 * 1024 * 1024 + 333)
    sealed = tmp_path / "outbox.mp4.age"
    sealed.write_bytes(pyrage.encrypt(plaintext, [device.to_public()]))
    for offset in (0, 1, 65_536, 1_000_003, len(plaintext)):
        with m.open_sealed_clip_at(sealed, [device], offset) as stream:
            assert stream.read() == plaintext[offset:]
    # Abandoned half way (an upload interrupted): the decrypting thread ends.
    stream = m.open_sealed_clip_at(sealed, [device], 10)
    assert stream.read(100) == plaintext[10:110]
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("age-reader")]
    with pytest.raises(ValueError, match="does not open"):
        with m.open_sealed_clip_at(sealed, [pyrage.x25519.Identity.generate()], 0) as stream:
            stream.read()
