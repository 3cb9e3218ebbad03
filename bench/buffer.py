"""The sealed ring buffer, measured against plain baselines in the same run.

    python bench/buffer.py [--ingest-segments 100] [--window-minutes 10]
                           [--small-hours 1] [--large-hours 24] [--repeats 3]

Prints:
- ingest: MB/s of the recorder's way into the ring, Ring.submit (sealing on the
X/fsync/rename/fsync dir + index row on the ring's
  store thread) until flushed, against the same bytes written unencrypted
  through the same file/fsync/index steps; 2 s segments at --bitrate-mbps
  (default 8), incompressible bytes;
- export: a --window-minutes window remuxed into one clip out of a buffer holding
  --small-hours and one holding --large-hours, against just reading and
  decrypting the same files;
- start-up: Ring.open (reconcile, key checks, eviction pass) with the large buffer;
- sealing CPU per hour of video at the bitrate, and what it means on a Pi 4.

Setup is not measured: the big buffers are filled directly in the ring's own
on-disk format (sealed files + index rows) without per-file fsync, with tiny
sealed segments outside the exported window (the clip builder never reads those;
the run checks that nothing was skipped) and real H.264 segments of the full
bitrate inside it. Everything lives in a temporary directory that is removed.
Run it alone: the machine's other load shows in the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pyrage
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from edge.buffer import agefile
from edge.buffer.clip import build_clip
from edge.buffer.index import SegmentIndex, SegmentRecord
from edge.buffer.ring import INDEX_NAME, SEGMENTS_DIR, Ring, RingReader, _write_durably
from edge.buffer.seal import seal_segment, sealed_digest
from edge.buffer.segment import Segment, SegmentMeta
from edge.clock import ManualClock
from edge.keys import KeyStore
from ringtools import HashingSink, RunSpec, make_segments

MB = 1_000_000
SEGMENT_MS = 2000
W0_MS = 1_790_000_000_000  # start of the exported window
# Published Pi 4 (Cortex-A72, no AES instructions) figures from design.md.
INGEST_ROUNDS = 5
PI4_CHACHA_MB_S = 120.0
PI4_AESGCM_MB_S = 21.0


def median_time(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic_segment(meta: SegmentMeta, size: int) -> Segment:
    # ftyp + random bytes: as incompressible as video, and no footage on disk in
    # the unencrypted baseline.
    ftyp = b"\x00\x00\x00\x18ftypiso5\x00\x00\x02\x00iso5iso6"
    return Segment(meta=meta, mp4=ftyp + os.urandom(size - len(ftyp)))


def meta_at(sequence: int, first_ms: int, frames: int = 60) -> SegmentMeta:
    return SegmentMeta(
        camera="bench",
        run_id="bench",
        sequence=sequence,
        first_frame_ms=first_ms,
        last_frame_ms=first_ms + SEGMENT_MS - SEGMENT_MS // frames,
        frame_count=frames,
        clock_synced=True,
        width=320,
        height=240,
    )


# -- ingest --------------------------------------------------------------------------


def bench_ingest(work_dir: Path, count: int, segment_bytes: int) -> None:
    segments = [
        synthetic_segment(meta_at(i, W0_MS + i * SEGMENT_MS), segment_bytes) for i in range(count)
    ]
    total_mb = count * segment_bytes / MB

    def sealed_run(round_no: int) -> float:
        clock = ManualClock(W0_MS)
        ring = Ring.open(
            work_dir / f"sealed-{round_no}",
            max_bytes=1 << 40,
            max_age_s=1e9,
            clock=clock,
            owner_recipients=[],
            pin_cap_bytes=0,
        )
        start = time.perf_counter()
        for segment in segments:
            ring.submit(segment)  # the recorder's way in: seals here, stores on its thread
        ring.flush()
        elapsed = time.perf_counter() - start
        ring.close()
        return elapsed

    def plain_run(round_no: int) -> float:
        # Same steps, no sealing and no hash: temp name, write, fsync, rename,
        # fsync dir, one index row (same SQLite settings).
        directory = work_dir / f"plain-{round_no}"
        (directory / SEGMENTS_DIR).mkdir(parents=True)
        index = SegmentIndex.open(directory / INDEX_NAME, create=True)
        start = time.perf_counter()
        for segment in segments:
            name = f"{secrets.token_hex(16)}.mp4"
            _write_durably(directory / SEGMENTS_DIR, name, segment.mp4)
            index.insert(
                file_name=name,
                meta=segment.meta,
                video_bytes=len(segment.mp4),
                sealed_bytes=len(segment.mp4),
                sealed_sha256=b"",
                digested_bytes=0,
                key_id="none",
            )
        elapsed = time.perf_counter() - start
        index.close()
        return elapsed

    sealed_times, plain_times = [], []
    for round_no in range(INGEST_ROUNDS):  # interleaved, so drift in disk speed hits both
        plain_times.append(plain_run(round_no))
        sealed_times.append(sealed_run(round_no))
        shutil.rmtree(work_dir / f"plain-{round_no}")
        shutil.rmtree(work_dir / f"sealed-{round_no}")
    sealed_mb_s = total_mb / statistics.median(sealed_times)
    plain_mb_s = total_mb / statistics.median(plain_times)
    print(f"ingest ({count} x {segment_bytes / MB:.1f} MB segments, median of {INGEST_ROUNDS}):")
    print(f"  sealed ring      {sealed_mb_s:8.1f} MB/s")
    print(f"  plain, same fsync{plain_mb_s:8.1f} MB/s")
    print(f"  ratio            {sealed_mb_s / plain_mb_s:8.2f}x   (target >= 0.8x)")


# -- export and start-up ----------------------------------------------------------------


def fill_buffer(
    data_dir: Path,
    keys_dir: Path,
    hours: float,
    window_count: int,
    window_files: dict[int, Path],
    window_video_bytes: dict[int, int],
    frames: int,
    tiny_sealed: bytes,
    tiny_video_bytes: int,
    key_id: str,
) -> None:
    """``hours`` of 2 s segments centred on the window, in the ring's format."""
    ring = Ring.open(
        data_dir,
        max_bytes=1 << 45,
        max_age_s=1e12,
        clock=ManualClock(W0_MS),
        owner_recipients=[],
        pin_cap_bytes=0,
        keys_dir=keys_dir,
    )
    ring.close()
    total = int(hours * 3600 * 1000 // SEGMENT_MS)
    before = (total - window_count) // 2
    seg_dir = data_dir / "buffer" / SEGMENTS_DIR
    index = SegmentIndex.open(data_dir / "buffer" / INDEX_NAME, create=False)
    tiny_digest = sealed_digest(tiny_sealed)
    rows = []
    for position in range(total):
        sequence = position - before  # the window's segments are 0..window_count-1
        meta = meta_at(sequence, W0_MS + sequence * SEGMENT_MS, frames)
        name = f"{secrets.token_hex(16)}.age"
        if 0 <= sequence < window_count:
            source = window_files[sequence]
            os.link(source, seg_dir / name)  # same sealed bytes in every buffer
            sealed = source.read_bytes()
            rows.append(
                (
                    name,
                    meta,
                    len(sealed),
                    sealed_digest(sealed),
                    window_video_bytes[sequence],
                )
            )
        else:
            with open(seg_dir / name, "wb") as file:
                file.write(tiny_sealed)
            rows.append((name, meta, len(tiny_sealed), tiny_digest, tiny_video_bytes))
    db = index._db
    db.execute("BEGIN")
    for name, meta, sealed_bytes, digest, video_bytes in rows:
        index.insert(
            file_name=name,
            meta=meta,
            video_bytes=video_bytes,
            sealed_bytes=sealed_bytes,
            sealed_sha256=digest[0],
            digested_bytes=digest[1],
            key_id=key_id,
        )
    db.execute("COMMIT")
    index.close()


def bench_export_and_startup(
    work_dir: Path,
    window_minutes: float,
    small_hours: float,
    large_hours: float,
    bitrate_mbps: float,
    fps: int,
    repeats: int,
) -> None:
    keys_dir = work_dir / "keys"
    window_count = int(window_minutes * 60 * 1000 // SEGMENT_MS)
    frames = fps * SEGMENT_MS // 1000
    # Real H.264 of about the bitrate: noise rows tuned to ~bitrate/8 bytes per second.
    target = int(bitrate_mbps * MB / 8 * SEGMENT_MS / 1000)
    noise_rows = 16
    while True:
        spec = RunSpec(count=3, frames_per_segment=frames, fps=fps, noise=noise_rows)
        real = make_segments(spec)
        if len(real[0].mp4) >= target * 0.9 or noise_rows >= 224:
            break
        noise_rows = min(224, int(noise_rows * target / max(1, len(real[0].mp4)) * 1.05) + 8)
    Ring.open(
        work_dir / "keysource",
        max_bytes=1 << 40,
        max_age_s=1e9,
        clock=ManualClock(W0_MS),
        owner_recipients=[],
        pin_cap_bytes=0,
        keys_dir=keys_dir,
    ).close()
    key = KeyStore(keys_dir).current(ManualClock(W0_MS))
    window_dir = work_dir / "window"
    window_dir.mkdir()
    window_files: dict[int, Path] = {}
    window_video_bytes: dict[int, int] = {}
    for sequence in range(window_count):
        source = real[sequence % len(real)]
        meta = meta_at(sequence, W0_MS + sequence * SEGMENT_MS, frames)
        path = window_dir / f"{sequence}.age"
        path.write_bytes(seal_segment(Segment(meta=meta, mp4=source.mp4), [key.recipient]))
        window_files[sequence] = path
        window_video_bytes[sequence] = len(source.mp4)
    tiny = make_segments(RunSpec(count=1, frames_per_segment=1))[0]
    tiny_sealed = seal_segment(tiny, [key.recipient])
    window_mb = sum(p.stat().st_size for p in window_files.values()) / MB
    print(
        f"export: {window_minutes:g} min window = {window_count} segments of "
        f"{len(real[0].mp4) / MB:.2f} MB real H.264 ({window_mb:.0f} MB sealed), "
        f"median of {repeats}:"
    )

    def fill(name: str, hours: float) -> Path:
        data_dir = work_dir / name
        fill_buffer(
            data_dir,
            keys_dir,
            hours,
            window_count,
            window_files,
            window_video_bytes,
            frames,
            tiny_sealed,
            len(tiny.mp4),
            key.key_id,
        )
        return data_dir

    small_dir = fill("small", small_hours)
    large_dir = fill("large", large_hours)
    end_ms = W0_MS + window_count * SEGMENT_MS - 1
    results = {}
    for label, data_dir in (("small", small_dir), ("large", large_dir)):
        reader = RingReader.open(data_dir, keys_dir=keys_dir)
        info = build_clip(reader, W0_MS, end_ms, HashingSink())  # warm-up; checks too
        assert info.segments == window_count and info.skipped == (), info.skipped
        records = reader.overlapping(W0_MS, end_ms)
        assert len(records) == window_count

        def export(reader: RingReader = reader) -> None:
            # As `edge export -o /dev/null`: a real file write, nothing kept.
            with open(os.devnull, "wb") as out:
                build_clip(reader, W0_MS, end_ms, out)

        def read_and_decrypt(records: list[SegmentRecord] = records, d: Path = data_dir) -> None:
            # The ring's own in-memory decryption (agefile.decrypt, OpenSSL), with
            # the key parsed once, as the ring holds it.
            for record in records:
                data = (d / "buffer" / SEGMENTS_DIR / record.file_name).read_bytes()
                agefile.decrypt(data, [key.private_key])

        def read_and_hash(records: list[SegmentRecord] = records, d: Path = data_dir) -> None:
            for record in records:
                hashlib.sha256((d / "buffer" / SEGMENTS_DIR / record.file_name).read_bytes())

        def query(reader: RingReader = reader) -> None:
            reader.overlapping(W0_MS, end_ms)

        clip_s = median_time(export, repeats)
        floor_s = median_time(read_and_decrypt, repeats)
        hash_s = median_time(read_and_hash, repeats)
        query_s = median_time(query, repeats)
        reader.close()
        results[label] = (clip_s, floor_s)
        per_segment_ms = 1000 / window_count
        hours = small_hours if label == "small" else large_hours
        print(
            f"  buffer of {hours:4g} h: clip {clip_s:6.2f} s ({window_mb / clip_s:6.1f} MB/s),"
            f" read+decrypt {floor_s:6.2f} s, ratio {clip_s / floor_s:4.2f}x (target <= 2x);"
            f" index query {query_s * 1000:.1f} ms"
        )
        print(
            f"    per segment: read+sha256 {hash_s * per_segment_ms:.1f} ms, read+decrypt "
            f"{floor_s * per_segment_ms:.1f} ms, whole clip step {clip_s * per_segment_ms:.1f} ms"
            f" (the rest: joining, writing and hashing the output)"
        )
    print(
        f"  {large_hours:g} h vs {small_hours:g} h: "
        f"{results['large'][0] / results['small'][0]:.2f}x   (target <= 1.2x)"
    )

    def open_large() -> None:
        ring = Ring.open(
            large_dir,
            max_bytes=1 << 45,
            max_age_s=1e12,
            clock=ManualClock(W0_MS),
            owner_recipients=[],
            pin_cap_bytes=0,
            keys_dir=keys_dir,
            rotate_every_s=1e9,
        )
        ring.close()

    rows = int(large_hours * 3600 * 1000 // SEGMENT_MS)
    startup_s = median_time(open_large, repeats)
    print(
        f"start-up with {large_hours:g} h indexed ({rows} segments): Ring.open "
        f"{startup_s:.2f} s   (target <= 2 s)"
    )


# -- sealing CPU ------------------------------------------------------------------------


def bench_sealing_cpu(segment_bytes: int, bitrate_mbps: float) -> None:
    from pyrage import x25519

    recipient = x25519.Identity.generate().to_public()
    segment = synthetic_segment(meta_at(0, W0_MS), segment_bytes)
    data = segment.mp4
    chacha = ChaCha20Poly1305(ChaCha20Poly1305.generate_key())
    aes = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = b"\0" * 12

    def whole_bytes() -> None:  # what seal_segment used before agefile.py: pyrage
        pyrage.encrypt(data, [recipient])

    candidates: dict[str, Callable[[], object]] = {
        "seal": lambda: seal_segment(segment, [recipient]),
        "whole": whole_bytes,
        "chacha": lambda: chacha.encrypt(nonce, data, None),
        "aes": lambda: aes.encrypt(nonce, data, None),
    }
    # Interleaved rounds, median per candidate: other load on the machine then
    # hits all of them alike.
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(15):
        for name, work in candidates.items():
            start = time.process_time()
            for _ in range(4):
                work()
            samples[name].append(4 * segment_bytes / MB / (time.process_time() - start))
    rate = {name: statistics.median(values) for name, values in samples.items()}
    seal_mb_s, whole_mb_s = rate["seal"], rate["whole"]
    chacha_mb_s, aes_mb_s = rate["chacha"], rate["aes"]
    hour_mb = bitrate_mbps / 8 * 3600
    # The index row's digest covers the age header only (seal.sealed_digest): no
    # hash of the whole segment is left to count.
    per_hour_s = hour_mb / seal_mb_s
    print(
        f"sealing CPU here (one core): seal_segment {seal_mb_s:.0f} MB/s; raw "
        f"ChaCha20-Poly1305 {chacha_mb_s:.0f} MB/s, AES-256-GCM {aes_mb_s:.0f} MB/s"
    )
    print(
        f"  (seal_segment writes age with OpenSSL's ChaCha20-Poly1305, edge/buffer/agefile.py;"
        f" pyrage.encrypt of the same bytes: {whole_mb_s:.0f} MB/s)"
    )
    print(
        f"  one hour at {bitrate_mbps:g} Mbit/s = {hour_mb:.0f} MB: {per_hour_s:.1f} CPU s "
        f"({per_hour_s / 36:.2f} % of one core)"
    )
    # Pi 4 estimate: age's cost is ChaCha20-Poly1305; scale by the published Pi 4
    # ChaCha figure relative to raw ChaCha here.
    pi_factor = PI4_CHACHA_MB_S / chacha_mb_s
    pi_seal = seal_mb_s * pi_factor
    pi_hour_s = hour_mb / pi_seal
    print(
        f"  Pi 4 estimate (ChaCha20-Poly1305 ~{PI4_CHACHA_MB_S:g} MB/s there, AES-GCM only "
        f"~{PI4_AESGCM_MB_S:g} MB/s): seal ~{pi_seal:.0f} MB/s, {pi_hour_s:.0f} CPU s per hour "
        f"({pi_hour_s / 36:.1f} % of one core); AES-GCM instead would cost "
        f"~{hour_mb / PI4_AESGCM_MB_S:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 200 MB a round: the ring's start (its store thread, the first seal) is a
    # small share of it, and the figure a steady rate.
    parser.add_argument("--ingest-segments", type=int, default=100)
    parser.add_argument("--window-minutes", type=float, default=10.0)
    parser.add_argument("--small-hours", type=float, default=1.0)
    parser.add_argument("--large-hours", type=float, default=24.0)
    parser.add_argument("--bitrate-mbps", type=float, default=8.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["ingest", "export", "cpu"], default=None)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to work (default: a temp dir)"
    )
    args = parser.parse_args()
    segment_bytes = int(args.bitrate_mbps * MB / 8 * SEGMENT_MS / 1000)
    work_dir = Path(tempfile.mkdtemp(prefix="edge-bench-buffer-", dir=args.dir))
    try:
        if args.only in (None, "ingest"):
            bench_ingest(work_dir / "ingest", args.ingest_segments, segment_bytes)
        if args.only in (None, "export"):
            (work_dir / "export").mkdir()
            bench_export_and_startup(
                work_dir / "export",
                args.window_minutes,
                args.small_hours,
                args.large_hours,
                args.bitrate_mbps,
                args.fps,
                args.repeats,
            )
        if args.only in (None, "cpu"):
            bench_sealing_cpu(segment_bytes, args.bitrate_mbps)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
