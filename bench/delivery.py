"""Delivery: building the clip against `edge export`, uploading it against curl.

    python bench/delivery.py [--minutes 10] [--mbps 3] [--runs 3] [--rss-minutes 60]
                             [--priority daemon|normal]
                             [--only build|upload]

Needs tests/tus_server/node_modules (`npm ci --prefix tests/tus_server`) for the upload.

Build (issue 6: within 1.1x of `edge export`; peak RSS flat in the clip's length).
A ring (edge.buffer.ring.Ring, sealed segments, real index) is filled with
``max(--minutes, --rss-minutes)`` minutes of 2 s segments of real 1280x720 30 fps
H.264 at about ``--mbps`` (tests/ringtools.py make_segments: a moving gradient
with rows of noise tuned to the bitrate; three distinct segments reused with
each segment's own times, as bench/buffer.py does). Each build runs in a child
process of its own (so its RSS is its own, read as VmHWM), one at a time,
interleaved A B A B:

- export: ``edge.commands.export``, exactly what `edge export --start --end -o
  FILE` runs (edge.buffer.clip.build_clip into a file), the baseline. It writes
  the clip unencrypted: here that is the synthetic test pattern, never footage,
  in the bench's temp directory, deleted after each run.
- outbox: ``Outbox.build`` (the same clip builder streamed into age encryption,
  fsynced, in the outbox), as the daemon makes a clip for a pending request.

- unsynced file (for reference only): the same clip builder into a plain file,
  never fsynced, which is how `edge export` wrote its clip before session 6.
- threaded export (for reference only): export's work built the way the outbox
  builds (the hashing and the writing on a thread beside the build, as the
  outbox hashes, seals and writes), which `edge export` is not. On two cores
  both are then CPU-bound, so the outbox's ratio to it is about their ratio of
  CPU time: what sealing costs when there is no idle core to hide it on.

All must give the same plaintext (SHA-256 compared each run). Prints median
wall and CPU time, the ratio outbox/export (the median of each run's ratio to
the export just before it), and the peak RSS of export and outbox for a
``--minutes`` and a ``--rss-minutes`` window (target: within 10 MB).

Upload (issue 6: within 1.2x of curl; peak RSS flat).

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

Both uploaders run at the priority the daemon gives its deliveries (nice
+BACKGROUND_NICE, edge/priority.py: recording comes first), the server at the
bench's own, as a remote server would be; ``--priority normal`` runs both
uploaders at the bench's own. It matters here only because the server shares
the machine's two cores: at equal priority, the decrypting uploader's threads
take turns with the server's.

Each run's stored file is checked against the source's SHA-256. Prints the
median wall time of each, the ratios to curl (target: within 1.2x), and the
peak RSS of the edge uploader for ``--minutes`` and for ``--rss-minutes``
(target: the longer clip within 10 MB of the shorter).

Run it alone: the machine's other load shows in the figures (the load average
is printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # uploadservers.py (tus server), ringtools.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common.py

import pyrage  # noqa: E402
from _common import cpu_s, load_text, median, proc_status_mb  # noqa: E402

from edge.priority import BACKGROUND_NICE  # noqa: E402
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


def curl_upload(server: TusServer, path: Path, nice: list[str]) -> float:
    size = path.stat().st_size
    started = time.monotonic()
    created = subprocess.run(
        [*nice, "curl", "-sS", "-D", "-", "-o", "/dev/null", "-X", "POST",
         "-H", "Tus-Resumable: 1.0.0", "-H", f"Upload-Length: {size}", server.url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    location = next(
        line.split(":", 1)[1].strip()
        for line in created.stdout.splitlines()
        if line.lower().startswith("location:")
    )
    subprocess.run(
        [*nice, "curl", "-sS", "-f", "-o", "/dev/null", "-X", "PATCH", "-T", str(path),
         "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
         "-H", "Content-Type: application/offset+octet-stream", location],
        check=True,
    )  # fmt: skip
    return time.monotonic() - started


def edge_upload(server: TusServer, clip: Clip, mode: str, nice: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one edge upload in a process of its own."""
    if mode == "file":
        args = [str(clip.sealed), "D.mp4.age", str(clip.sealed_size), ""]
    else:
        args = [str(clip.sealed), "D.mp4", str(clip.size), clip.identity]
    result = subprocess.run(
        [*nice, sys.executable, "-c", EDGE_CHILD, server.url, mode, *args],
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


# ---------------------------------------------------------------- building the clip

SEGMENT_MS = 2000
FPS = 30
WIDTH, HEIGHT = 1280, 720
T0_MS = 1_790_000_000_000  # the ring's first frame (a fixed, synchronised-looking time)


@dataclasses.dataclass
class FilledRing:
    data_dir: Path  # the ring's data_dir (buffer/ and keys/ in it, as the daemon lays it out)
    minutes: float
    segment_bytes: int  # average MP4 bytes per 2 s segment


def fill_ring(data_dir: Path, minutes: float, mbps: float) -> FilledRing:
    """A real Ring (sealed segments, index) holding ``minutes`` of 720p30 H.264 from T0_MS."""
    from edge.buffer.ring import Ring
    from edge.buffer.segment import Segment, SegmentMeta
    from edge.clock import ManualClock
    from ringtools import RunSpec, make_segments

    frames = FPS * SEGMENT_MS // 1000
    target_bytes = int(mbps * 1e6 / 8 * SEGMENT_MS / 1000)

    def spec(noise_rows: int) -> RunSpec:
        return RunSpec(count=3, frames_per_segment=frames, fps=FPS, width=WIDTH, height=HEIGHT,
                       noise=noise_rows)

    def average_bytes(noise_rows: int) -> float:
        made = make_segments(spec(noise_rows))
        return sum(len(x.mp4) for x in made) / len(made)

    # Rows of noise set the bitrate (in steps: the encoder works in 16-row blocks):
    # scale towards the target a few times, keep the closest.
    tried: dict[int, float] = {}
    rows = 8
    while rows not in tried and len(tried) < 4:
        tried[rows] = average_bytes(rows)
        if abs(tried[rows] - target_bytes) <= 0.1 * target_bytes:
            break
        rows = max(1, min(HEIGHT - 64, round(rows * target_bytes / tried[rows])))
    rows = min(tried, key=lambda r: abs(tried[r] - target_bytes))
    sources = make_segments(spec(rows))
    clock = ManualClock(T0_MS)
    ring = Ring.open(data_dir, max_bytes=1 << 42, max_age_s=1e9, clock=clock,
                     owner_recipients=[], pin_cap_bytes=0)
    count = int(minutes * 60_000 // SEGMENT_MS)
    for sequence in range(count):
        first_ms = T0_MS + sequence * SEGMENT_MS
        meta = SegmentMeta(camera="bench", run_id="bench", sequence=sequence,
                           first_frame_ms=first_ms,
                           last_frame_ms=first_ms + SEGMENT_MS - SEGMENT_MS // frames,
                           frame_count=frames, clock_synced=True, width=WIDTH, height=HEIGHT)
        clock.advance_ms(max(0, meta.last_frame_ms - clock.now_ms()))
        ring.put(Segment(meta=meta, mp4=sources[sequence % len(sources)].mp4))
    ring.close()
    average = sum(len(x.mp4) for x in sources) // len(sources)
    return FilledRing(data_dir, minutes, average)


def build_child(mode: str, data_dir: Path, out_dir: Path, start_ms: int, end_ms: int) -> None:
    """One build in this process; prints {seconds, cpu_s, max_rss_kb, sha256, bytes}."""
    import contextlib
    import io
    import re

    from edge import commands
    from edge.buffer import clip
    from edge.buffer.ring import RingReader
    from edge.config import parse_config
    from edge.share.outbox import Outbox
    from edge.units import format_rfc3339_ms

    if mode == "export":
        config = parse_config(f'[device]\ndata_dir = "{data_dir}"\n')
        output = out_dir / "export.mp4"
        printed = io.StringIO()
        cpu0_s, started_s = cpu_s(), time.monotonic()
        with contextlib.redirect_stdout(printed):  # `edge export` prints one line: keep it
            commands.export(config, format_rfc3339_ms(start_ms), format_rfc3339_ms(end_ms),
                            output)
        seconds, used_s = time.monotonic() - started_s, cpu_s() - cpu0_s
        found = re.search(r"sha256 ([0-9a-f]{64})", printed.getvalue())
        assert found is not None, printed.getvalue()
        sha256, size = found.group(1), output.stat().st_size
        # Outside the clock: the clip holds every frame of the window (packets, no decode).
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
             "-show_entries", "stream=nb_read_packets,width,height", "-of", "json", str(output)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        stream = json.loads(probe.stdout)["streams"][0]
        frames = int(stream["nb_read_packets"])
    elif mode == "plain":
        # The reference: export's work without its fsync (edge export before session 6).
        from edge.priority import yield_to_recording

        yield_to_recording()
        reader = RingReader.open(data_dir)
        cpu0_s, started_s = cpu_s(), time.monotonic()
        with open(out_dir / "plain.mp4", "wb") as handle:
            info = clip.build_clip(reader, start_ms, end_ms, handle)
        seconds, used_s = time.monotonic() - started_s, cpu_s() - cpu0_s
        sha256, size, frames = info.sha256, info.bytes, -1
        reader.close()
    elif mode == "threaded":
        from edge.buffer.agefile import HashingWriter
        from edge.durable import replacing_durably
        from edge.priority import yield_to_recording
        from edge.writebehind import WriteBehind

        yield_to_recording()
        reader = RingReader.open(data_dir)
        output = out_dir / "threaded.mp4"
        cpu0_s, started_s = cpu_s(), time.monotonic()
        with replacing_durably(output, temporary=out_dir / ".threaded.mp4.part") as synced:
            hashed = HashingWriter(synced)
            behind = WriteBehind(hashed, name="bench-export-write")

            def digest_of_clip() -> str:
                behind.close()
                return hashed.hexdigest()

            info = clip.build_clip(reader, start_ms, end_ms, behind, digest_of_out=digest_of_clip)
        seconds, used_s = time.monotonic() - started_s, cpu_s() - cpu0_s
        sha256, size, frames = info.sha256, info.bytes, -1
        reader.close()
    else:
        # As the daemon has them: the ring open, the outbox made at start-up.
        reader = RingReader.open(data_dir)
        outbox = Outbox(out_dir / "outbox", data_dir / "keys")
        cpu0_s, started_s = cpu_s(), time.monotonic()
        made = outbox.build(1, reader, start_ms, end_ms)
        seconds, used_s = time.monotonic() - started_s, cpu_s() - cpu0_s
        sha256, size = made.sha256, made.size_bytes
        frames = -1  # the export's check covers it: the same SHA-256
        reader.close()
    print(json.dumps({"seconds": seconds, "cpu_s": used_s, "sha256": sha256, "bytes": size,
                      "frames": frames, "max_rss_kb": int(proc_status_mb("VmHWM") * 1024)}))


def run_build(mode: str, ring: FilledRing, out_dir: Path, minutes: float) -> dict[str, float]:
    """One build of the first ``minutes`` of the ring, in a child process; the output removed."""
    end_ms = T0_MS + int(minutes * 60_000) - 1
    out_dir.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--build-child", mode,
         str(ring.data_dir), str(out_dir), str(T0_MS), str(end_ms)],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"{mode} build failed (exit {result.returncode})")
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    for path in sorted(out_dir.rglob("*"), reverse=True):  # files, then the directories
        path.rmdir() if path.is_dir() else path.unlink()
    return report


def bench_build(args: argparse.Namespace, directory: Path) -> None:
    longest = max(args.minutes, args.rss_minutes)
    started_s = time.monotonic()
    ring = fill_ring(directory / "ring", longest, args.mbps)
    print(f"build: ring of {longest:g} min of {WIDTH}x{HEIGHT} {FPS} fps H.264, 2 s segments of "
          f"{ring.segment_bytes / 1e6:.2f} MB ({ring.segment_bytes * 8 / 2e6:.1f} Mbit/s), "
          f"filled in {time.monotonic() - started_s:.0f} s; {load_text()}")
    out_dir = directory / "built"
    modes = {
        "export": "edge export",
        "outbox": "Outbox.build",
        "plain": "unsynced file",
        "threaded": "threaded export",
    }
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for _ in range(args.runs):  # A B A B: drift on the machine hits both alike
        for mode in modes:
            runs[mode].append(run_build(mode, ring, out_dir, args.minutes))
    digests = {run["sha256"] for mode_runs in runs.values() for run in mode_runs}
    if len(digests) != 1:
        raise SystemExit(f"the builds gave different clips: {sorted(digests)}")
    expected_frames = int(args.minutes * 60 * FPS)
    frames = runs["export"][0]["frames"]
    if frames != expected_frames:
        raise SystemExit(f"the clip holds {frames} frames, not {expected_frames}")
    size_mb = runs["export"][0]["bytes"] / 1e6
    print(f"build: {args.minutes:g} min clip = {size_mb:.0f} MB, {frames} frames, the same SHA-256 "
          f"from every run; "
          f"median of {args.runs}:")
    wall = {mode: median([run["seconds"] for run in runs[mode]]) for mode in modes}
    cpu = {mode: median([run["cpu_s"] for run in runs[mode]]) for mode in modes}
    for mode, label in modes.items():
        print(f"{label:>16}: wall {wall[mode]:6.2f} s ({size_mb / wall[mode]:4.0f} MB/s), "
              f"CPU {cpu[mode]:6.2f} s   runs: "
              + ", ".join(f"{run['seconds']:.2f}" for run in runs[mode]))
    # Run by run (each outbox build against the export just before it), then the
    # median: a slow spell of the machine then weighs on both sides of one ratio.
    def paired(mode: str) -> float:
        pairs = zip(runs["outbox"], runs[mode], strict=True)
        return median([outbox["seconds"] / other["seconds"] for outbox, other in pairs])

    ratio = paired("export")
    print(f"{'outbox/export':>16}: wall x{ratio:.2f}, median of the runs' ratios (target <= 1.1x: "
          f"{'OK' if ratio <= 1.1 else 'MISSED'}), CPU x{cpu['outbox'] / cpu['export']:.2f}")
    unsynced = paired("plain")
    print(f"{'outbox/plain':>16}: wall x{unsynced:.2f} (for reference: against the clip builder "
          "into a file that is never fsynced, as `edge export` wrote it before session 6)")
    threaded = paired("threaded")
    print(f"{'outbox/threaded':>16}: wall x{threaded:.2f}, CPU "
          f"x{cpu['outbox'] / cpu['threaded']:.2f} (for reference: against export's work done "
          "the outbox's way, hashing and writing on a thread beside the build)")
    if not args.rss_minutes:
        return
    for mode, label in modes.items():
        if mode in ("plain", "threaded"):
            continue
        short_mb = max(run["max_rss_kb"] for run in runs[mode]) / 1024
        long_run = run_build(mode, ring, out_dir, args.rss_minutes)
        long_mb = long_run["max_rss_kb"] / 1024
        growth = long_mb - short_mb
        print(f"{label:>16}: peak RSS {short_mb:.1f} MB ({args.minutes:g} min), {long_mb:.1f} MB "
              f"({args.rss_minutes:g} min): {growth:+.1f} MB (target within 10 MB: "
              f"{'OK' if abs(growth) <= 10 else 'MISSED'})")


MODES = {"file": "edge .age file", "sealed": "edge unsealed"}


def bench_upload(args: argparse.Namespace, directory: Path) -> None:
    server = TusServer(directory / "store")
    server.start()
    try:
        clip = make_clip(directory, args.minutes, args.mbps)
        print(
            f"upload: clip of {args.minutes:g} min at {args.mbps:g} Mbit/s = "
            f"{clip.size / 1e6:.0f} MB plaintext, {clip.sealed_size / 1e6:.0f} MB sealed; "
            f"{load_text()}"
        )
        nice = ["nice", "-n", str(BACKGROUND_NICE)] if args.priority == "daemon" else []
        print(f"uploaders at {'nice +' + str(BACKGROUND_NICE) if nice else 'normal priority'}")
        times: dict[str, list[float]] = {"curl": [], **{label: [] for label in MODES.values()}}
        peak_mb: dict[str, float] = {}
        for _ in range(args.runs):  # interleaved, so drift hits all three alike
            times["curl"].append(curl_upload(server, clip.plain, nice))
            check_and_clear(server, clip.plain_sha256)
            for mode, label in MODES.items():
                seconds, rss_mb = edge_upload(server, clip, mode, nice)
                times[label].append(seconds)
                peak_mb[label] = max(peak_mb.get(label, 0.0), rss_mb)
        floor = statistics.median(times["curl"])
        for label, values in times.items():
            middle = statistics.median(values)
            print(
                f"{label:>16}: median {middle:6.2f} s ({clip.size / 1e6 / middle:4.0f} MB/s)"
                f"  x{middle / floor:4.2f} of curl (target <= 1.2x)   runs: "
                + ", ".join(f"{v:.2f}" for v in values)
            )
        clip.plain.unlink()
        clip.sealed.unlink()
        if not args.rss_minutes:
            return
        long_clip = make_clip(directory, args.rss_minutes, args.mbps)
        long_clip.plain.unlink()
        for mode, label in MODES.items():
            _, long_mb = edge_upload(server, long_clip, mode, nice)
            growth = long_mb - peak_mb[label]
            print(
                f"{label:>16}: peak RSS {peak_mb[label]:.1f} MB ({args.minutes:g} min), "
                f"{long_mb:.1f} MB ({args.rss_minutes:g} min): {growth:+.1f} MB "
                f"(target within 10 MB: {'OK' if abs(growth) <= 10 else 'MISSED'})"
            )
        long_clip.sealed.unlink()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--mbps", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rss-minutes", type=float, default=60, help="0 skips the RSS check")
    parser.add_argument("--only", choices=["build", "upload"], default=None)
    parser.add_argument("--priority", choices=["daemon", "normal"], default="daemon",
                        help="the uploaders' CPU priority: the daemon's for deliveries, or normal")
    parser.add_argument("--build-child", nargs=5, help=argparse.SUPPRESS,
                        metavar=("MODE", "DATA_DIR", "OUT_DIR", "START_MS", "END_MS"))
    args = parser.parse_args()
    if args.build_child:
        mode, data_dir, out_dir, start_ms, end_ms = args.build_child
        build_child(mode, Path(data_dir), Path(out_dir), int(start_ms), int(end_ms))
        return

    with tempfile.TemporaryDirectory(prefix="edge-bench-delivery-") as tmp:
        directory = Path(tmp)
        if args.only in (None, "build"):
            bench_build(args, directory)
            shutil.rmtree(directory / "ring")  # room for the upload's clips
        if args.only in (None, "upload"):
            bench_upload(args, directory)


if __name__ == "__main__":
    main()
