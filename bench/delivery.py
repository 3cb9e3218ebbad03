"""Delivery upload against curl, to the same local tus server, in the same script.

    python bench/delivery.py [--minutes 10] [--mbps 3] [--runs 3] [--rss-minutes 60]

Needs tests/tus_server/node_modules (`npm ci --prefix tests/tus_server`).

A clip of ``--minutes`` at ``--mbps`` (3 Mbit/s ~ a 720p H.264 stream; 10 min is
225 MB) is made of random bytes (the uploader never looks inside) and sealed with
age. Each uploader runs in its own process, one at a time, against the real tus
server (@tus/server + @tus/file-store on this machine):

- curl: ``POST`` to create, then one ``PATCH -T file`` of the plaintext file,
  the floor for moving these bytes over HTTP to this server.
- edge, encrypted (``D.mp4.age``): ``upload_delivery`` of the age file as it
  lies in the outbox (``UploadFile.from_path``).
- edge, unencrypted (``D.mp4``): ``upload_delivery`` of the plaintext decrypted on
  the fly from the sealed outbox copy (``open_sealed_clip_at``): decryption is
  counted against edge, not against curl.

Each run's stored file is checked against the source's SHA-256. Prints the
median wall time of each, the ratios to curl (target: within 1.2x), and the
peak RSS of the edge uploader for ``--minutes`` and for ``--rss-minutes``
(target: the longer clip within 10 MB of the shorter).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # tests/uploadservers.py: the real tus server

import pyrage  # noqa: E402

from uploadservers import TusServer  # noqa: E402

EDGE_CHILD = r"""
import functools, json, sys, threading, time
from pathlib import Path
import pyrage
from edge.share.manifest import open_sealed_clip_at
from edge.share.upload import UploadFile, upload_delivery

url, mode, path, name, size, identity = sys.argv[1:]
if mode == "file":
    clip = UploadFile.from_path(name, Path(path))
else:
    ids = [pyrage.x25519.Identity.from_str(identity)]
    clip = UploadFile(name, int(size), functools.partial(open_sealed_clip_at, Path(path), ids))
started = time.monotonic()
upload_delivery(url, "tus", [clip], request_id="bench", allowed_hosts=["127.0.0.1"],
                allow_insecure_localhost=True, state={}, stop_event=threading.Event())
elapsed = time.monotonic() - started
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over from fork).
status = open("/proc/self/status").read().splitlines()
hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"seconds": elapsed, "max_rss_kb": hwm_kb}))
"""


@dataclasses.dataclass
class Clip:
    size: int  # plaintext bytes
    plain: Path  # random bytes, not footage: curl's input
    plain_sha256: str
    sealed: Path  # the outbox copy, age-sealed to the device
    sealed_size: int
    sealed_sha256: str
    identity: str  # the device's age identity, to unseal


def make_clip(directory: Path, minutes: float, mbps: float) -> Clip:
    size = int(minutes * 60 * mbps * 1e6 / 8)
    identity = pyrage.x25519.Identity.generate()
    plain = directory / f"plain-{minutes:g}m.bin"
    with plain.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 4 << 20))
            out.write(block)
            left -= len(block)
    sealed = directory / f"sealed-{minutes:g}m.age"
    with plain.open("rb") as source, sealed.open("wb") as out:
        pyrage.encrypt_io(source, out, [identity.to_public()])
    return Clip(
        size=size,
        plain=plain,
        plain_sha256=_sha256_file(plain),
        sealed=sealed,
        sealed_size=sealed.stat().st_size,
        sealed_sha256=_sha256_file(sealed),
        identity=str(identity),
    )


def curl_upload(server: TusServer, path: Path) -> float:
    size = path.stat().st_size
    started = time.monotonic()
    created = subprocess.run(
        ["curl", "-sS", "-D", "-", "-o", "/dev/null", "-X", "POST",
         "-H", "Tus-Resumable: 1.0.0", "-H", f"Upload-Length: {size}", server.url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    location = next(
        line.split(":", 1)[1].strip()
        for line in created.stdout.splitlines()
        if line.lower().startswith("location:")
    )
    subprocess.run(
        ["curl", "-sS", "-f", "-o", "/dev/null", "-X", "PATCH", "-T", str(path),
         "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
         "-H", "Content-Type: application/offset+octet-stream", location],
        check=True,
    )  # fmt: skip
    return time.monotonic() - started


def edge_upload(server: TusServer, clip: Clip, mode: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one edge upload in a process of its own."""
    if mode == "file":
        args = [str(clip.sealed), "D.mp4.age", str(clip.sealed_size), ""]
    else:
        args = [str(clip.sealed), "D.mp4", str(clip.size), clip.identity]
    result = subprocess.run(
        [sys.executable, "-c", EDGE_CHILD, server.url, mode, *args],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    check_and_clear(server, clip.sealed_sha256 if mode == "file" else clip.plain_sha256)
    return float(report["seconds"]), report["max_rss_kb"] / 1024


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_and_clear(server: TusServer, sha256: str) -> None:
    """The stored upload must be the source, byte for byte; then make room for the next."""
    for info in list(server.storage_dir.glob("*.json")):
        data = server.storage_dir / info.stem
        assert _sha256_file(data) == sha256, "the stored upload differs from the source"
        data.unlink()
        info.unlink()


MODES = {"file": "edge .age file", "sealed": "edge unsealed"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--mbps", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rss-minutes", type=float, default=60, help="0 skips the RSS check")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edge-bench-delivery-") as tmp:
        directory = Path(tmp)
        server = TusServer(directory / "store")
        server.start()
        try:
            clip = make_clip(directory, args.minutes, args.mbps)
            print(
                f"clip: {args.minutes:g} min at {args.mbps:g} Mbit/s = {clip.size / 1e6:.0f} MB "
                f"plaintext, {clip.sealed_size / 1e6:.0f} MB sealed"
            )
            times: dict[str, list[float]] = {"curl": [], **{label: [] for label in MODES.values()}}
            peak_mb: dict[str, float] = {}
            for _ in range(args.runs):  # interleaved, so drift hits all three alike
                times["curl"].append(curl_upload(server, clip.plain))
                check_and_clear(server, clip.plain_sha256)
                for mode, label in MODES.items():
                    seconds, rss_mb = edge_upload(server, clip, mode)
                    times[label].append(seconds)
                    peak_mb[label] = max(peak_mb.get(label, 0.0), rss_mb)
            floor = statistics.median(times["curl"])
            for label, values in times.items():
                median = statistics.median(values)
                print(
                    f"{label:>16}: median {median:6.2f} s ({clip.size / 1e6 / median:4.0f} MB/s)"
                    f"  x{median / floor:4.2f} of curl   runs: "
                    + ", ".join(f"{v:.2f}" for v in values)
                )
            if not args.rss_minutes:
                return
            clip.plain.unlink()
            clip.sealed.unlink()
            long_clip = make_clip(directory, args.rss_minutes, args.mbps)
            long_clip.plain.unlink()
            for mode, label in MODES.items():
                _, long_mb = edge_upload(server, long_clip, mode)
                print(
                    f"{label:>16}: peak RSS {peak_mb[label]:.1f} MB ({args.minutes:g} min), "
                    f"{long_mb:.1f} MB ({args.rss_minutes:g} min): "
                    f"{long_mb - peak_mb[label]:+.1f} MB"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
