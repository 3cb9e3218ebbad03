"""Recording cost: edge's pipeline beside the ffmpeg CLI doing the same job.

    python bench/record.py [--seconds 60]

Scenarios, each run in a fresh child process so CPU time and peak RSS are the
whole process's (measured with wait4):

1. 1280x720 at 30 fps from the virtual camera, encoded with libx264 and cut into
   2 s fragmented-MP4 segments in memory (counted, then dropped), beside
   ``ffmpeg -re`` encoding its own ``testsrc2`` to 2 s segments with the same
   encoder settings.
2. The same at 1920x1080.
3. Passthrough of an 8 Mbit/s 1080p30 H.264 file (``camera.file``), beside
   ``ffmpeg -re -stream_loop -1 -i FILE -c copy -f segment``.

Printed per scenario: CPU seconds per second of video (whole process, and for
edge also while recording only, leaving out Python's start-up), peak RSS,
dropped frames, and edge/ffmpeg ratios.

ffmpeg writes its segments to a temporary directory (on /dev/shm where there is
one) that is removed afterwards; they hold only its test pattern.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
SEGMENT_SECONDS = 2
FPS = 30
PRESET = "superfast"
CRF = 23
KEYINT = SEGMENT_SECONDS * FPS
PASSTHROUGH_BITRATE = "8M"


@dataclass
class Result:
    label: str
    cpu_s: float  # user + system, whole process
    video_s: float
    peak_rss_mb: float
    dropped: int | None = None
    dropped_by_source: int | None = None  # of those, late reads in the camera (CPU starved)
    recording_cpu_s: float | None = None  # edge only: CPU while recording
    stored_bytes: int = 0  # all segments

    @property
    def mbit_per_s(self) -> float:
        return self.stored_bytes * 8 / self.video_s / 1e6

    @property
    def cpu_per_video_s(self) -> float:
        return self.cpu_s / self.video_s

    @property
    def steady_cpu_per_video_s(self) -> float | None:
        if self.recording_cpu_s is None:
            return None
        return self.recording_cpu_s / self.video_s


def run_measured(argv: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """Runs a child; returns (CPU seconds, peak RSS in MB, its stdout).

    The child is reaped with wait4, which returns its resource usage alone (not mixed
    with other children's); its pipes are drained on threads meanwhile.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    chunks: dict[str, bytes] = {}

    def drain(name: str, pipe: IO[bytes]) -> None:
        chunks[name] = pipe.read()

    assert proc.stdout is not None and proc.stderr is not None
    drains = [
        threading.Thread(target=drain, args=("out", proc.stdout), name="bench-stdout"),
        threading.Thread(target=drain, args=("err", proc.stderr), name="bench-stderr"),
    ]
    for thread in drains:
        thread.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for thread in drains:
        thread.join()
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode != 0:
        sys.stderr.write(chunks.get("err", b"").decode(errors="replace"))
        raise SystemExit(f"{argv[0]} failed with exit code {proc.returncode}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, chunks["out"].decode()


def ffmpeg_encode(width: int, height: int, seconds: int, workdir: Path) -> Result:
    argv = [
        "ffmpeg", "-v", "error", "-nostdin", "-re",
        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={FPS},format=yuv420p",
        "-t", str(seconds),
        "-c:v", "libx264", "-preset", PRESET, "-tune", "zerolatency", "-crf", str(CRF),
        "-forced-idr", "1",
        "-x264-params", f"keyint={KEYINT}:min-keyint={KEYINT}:scenecut=0:force-cfr=1",
        "-force_key_frames", f"expr:gte(t,n_forced*{SEGMENT_SECONDS})",
        "-f", "segment", "-segment_time", str(SEGMENT_SECONDS), "-segment_format", "mp4",
        "-segment_format_options", "movflags=frag_keyframe+empty_moov+default_base_moof",
        str(workdir / "seg%05d.mp4"),
    ]  # fmt: skip
    cpu_s, rss_mb, _ = run_measured(argv)
    stored = segment_bytes(workdir, "seg")
    label = f"ffmpeg testsrc2 {width}x{height}"
    return Result(label, cpu_s, float(seconds), rss_mb, stored_bytes=stored)


def ffmpeg_copy(file: Path, seconds: int, workdir: Path) -> Result:
    argv = [
        "ffmpeg", "-v", "error", "-nostdin", "-re", "-stream_loop", "-1", "-i", str(file),
        "-t", str(seconds), "-c", "copy",
        "-f", "segment", "-segment_time", str(SEGMENT_SECONDS), "-segment_format", "mp4",
        "-segment_format_options", "movflags=frag_keyframe+empty_moov+default_base_moof",
        str(workdir / "copy%05d.mp4"),
    ]  # fmt: skip
    cpu_s, rss_mb, _ = run_measured(argv)
    stored = segment_bytes(workdir, "copy")
    return Result("ffmpeg -c copy", cpu_s, float(seconds), rss_mb, stored_bytes=stored)


def segment_bytes(workdir: Path, prefix: str) -> int:
    """The size of ffmpeg's segments, which are then removed."""
    total = 0
    for path in workdir.glob(f"{prefix}*.mp4"):
        total += path.stat().st_size
        path.unlink()
    return total


def edge_run(label: str, child_args: list[str]) -> Result:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", *child_args]
    cpu_s, rss_mb, out = run_measured(argv, cwd=REPO)
    report = json.loads(out.strip().splitlines()[-1])
    return Result(
        label,
        cpu_s,
        report["video_s"],
        rss_mb,
        dropped=report["dropped"],
        dropped_by_source=report["dropped_by_source"],
        recording_cpu_s=report["recording_cpu_s"],
        stored_bytes=report["bytes"],
    )


# --- the child: one recording in this process -------------------------------------------


class CountingSink:
    def __init__(self) -> None:
        self.segments = 0
        self.bytes = 0

    def put(self, segment: object) -> None:
        self.segments += 1
        self.bytes += len(segment.mp4)  # type: ignore[attr-defined]


def child(kind: str, width: int, height: int, seconds: int, file: str | None) -> None:
    sys.path.insert(0, str(REPO))
    from edge.buffer.segmenter import Segmenter
    from edge.capture import open_source
    from edge.capture.encoder import make_encoder
    from edge.clock import SystemClock
    from edge.recorder import Recorder

    clock = SystemClock()
    source = open_source("virtual", width, height, FPS, None, Path(file) if file else None, clock)
    sink = CountingSink()
    segmenter = Segmenter(sink, "bench", "bench", SEGMENT_SECONDS)
    encoder = None
    if kind == "virtual":
        encoder = make_encoder("libx264", width, height, FPS, CRF, None, KEYINT, preset=PRESET)
    recorder = Recorder(source, segmenter, clock, encoder=encoder)
    before = resource.getrusage(resource.RUSAGE_SELF)
    recorder.start()
    threading.Event().wait(seconds)  # the length of the recording
    recorder.stop()
    after = resource.getrusage(resource.RUSAGE_SELF)
    stats = recorder.stats
    fmt = source.video_format
    print(
        json.dumps(
            {
                "video_s": stats.frames_encoded / float(fmt.fps),
                "dropped": stats.frames_dropped,
                "dropped_by_source": stats.frames_dropped_by_source,
                "segments": sink.segments,
                "bytes": sink.bytes,
                "errors": stats.errors,
                "recording_cpu_s": (after.ru_utime + after.ru_stime)
                - (before.ru_utime + before.ru_stime),
            }
        )
    )


# --- the report -------------------------------------------------------------------------


def show(ours: Result, theirs: Result, one_core_note: bool = False) -> None:
    steady = ours.steady_cpu_per_video_s
    print(f"  {ours.label}:")
    print(
        f"    CPU {ours.cpu_per_video_s:.3f} s per s of video"
        f" ({steady:.3f} while recording, without start-up),"
        f" peak RSS {ours.peak_rss_mb:.0f} MB,"
        f" dropped frames {ours.dropped} ({ours.dropped_by_source} skipped by the camera),"
        f" video {ours.video_s:.1f} s at {ours.mbit_per_s:.2f} Mbit/s"
    )
    print(f"  {theirs.label}:")
    print(
        f"    CPU {theirs.cpu_per_video_s:.3f} s per s of video,"
        f" peak RSS {theirs.peak_rss_mb:.0f} MB, video {theirs.video_s:.1f} s"
        f" at {theirs.mbit_per_s:.2f} Mbit/s"
    )
    print(
        f"  ratio edge/ffmpeg: CPU {ours.cpu_per_video_s / theirs.cpu_per_video_s:.2f}x"
        f" (recording only: {(steady or 0) / theirs.cpu_per_video_s:.2f}x),"
        f" RSS {ours.peak_rss_mb / theirs.peak_rss_mb:.2f}x"
    )
    if one_core_note:
        print(f"  edge passthrough uses {100 * (steady or 0):.2f}% of one core while recording")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="length of each recording")
    parser.add_argument("--skip-1080p", action="store_true")
    parser.add_argument("--skip-passthrough", action="store_true")
    parser.add_argument("--child", nargs=5, metavar=("KIND", "W", "H", "SECONDS", "FILE"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.child:
        kind, w, h, secs, file = args.child
        child(kind, int(w), int(h), int(secs), None if file == "-" else file)
        return
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is not installed")
    seconds = args.seconds
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        workdir = Path(tmp)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"edge recording bench: {seconds} s per run, {os.cpu_count()} CPUs, load {load}")
        sizes = [(1280, 720)] + ([] if args.skip_1080p else [(1920, 1080)])
        for width, height in sizes:
            print(f"\n{width}x{height} at {FPS} fps, libx264 {PRESET} crf {CRF}, "
                  f"{SEGMENT_SECONDS} s segments")  # fmt: skip
            ours = edge_run(
                f"edge virtual camera {width}x{height}",
                ["virtual", str(width), str(height), str(seconds), "-"],
            )
            theirs = ffmpeg_encode(width, height, seconds, workdir)
            show(ours, theirs)
        if not args.skip_passthrough:
            file = workdir / "source.mp4"
            subprocess.run(
                [
                    "ffmpeg", "-v", "error", "-nostdin", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate={FPS}", "-t", "20",
                    "-c:v", "libx264", "-preset", "veryfast", "-b:v", PASSTHROUGH_BITRATE,
                    "-maxrate", PASSTHROUGH_BITRATE, "-bufsize", "16M", "-bf", "0",
                    "-g", str(KEYINT), "-pix_fmt", "yuv420p", str(file),
                ],
                check=True,
            )  # fmt: skip
            print(f"\npassthrough of a 1920x1080 {FPS} fps {PASSTHROUGH_BITRATE}bit/s file")
            ours = edge_run(
                "edge camera.file passthrough",
                ["passthrough", "1920", "1080", str(seconds), str(file)],
            )
            theirs = ffmpeg_copy(file, seconds, workdir)
            show(ours, theirs, one_core_note=True)


if __name__ == "__main__":
    main()
