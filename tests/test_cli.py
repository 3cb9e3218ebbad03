"""The `edge` command as a user runs it: a real child process, real files."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from conftest import REPO_ROOT, VECTORS_PATH, run_edge
from videotools import decode


def _vectors() -> dict:  # type: ignore[type-arg]
    if not VECTORS_PATH.exists():
        pytest.fail(f"the spec's vectors are missing: {VECTORS_PATH}")
    return json.loads(VECTORS_PATH.read_text())  # type: ignore[no-any-return]


def _vector_config(tmp_path: Path) -> Path:
    vectors = _vectors()
    policy = vectors["policy"]
    config = tmp_path / "edge.toml"
    config.write_text(
        f"""
[device]
data_dir = "{tmp_path / "data"}"
latitude = {vectors["location"]["lat"]}
longitude = {vectors["location"]["lon"]}
[trust]
platform_keys = {json.dumps(vectors["trust"]["platform_keys"])}
[policy]
max_window = "{policy["max_window"]}"
max_radius_m = {policy["max_radius_m"]}
[upload]
allow_insecure_localhost = {str(policy["allow_insecure_localhost"]).lower()}
"""
    )
    return config


def test_request_check_judges_every_vector_as_the_spec_says(tmp_path: Path) -> None:
    vectors = _vectors()
    config = _vector_config(tmp_path)
    for index, case in enumerate(vectors["cases"]):
        payload = tmp_path / f"case-{index}.bin"
        payload.write_bytes(base64.b64decode(case["payload_b64"]))
        # One case in three by stdin, the others by file: both ways are the CLI's.
        if index % 3 == 0:
            result = run_edge(
                "--config",
                str(config),
                "request",
                "check",
                "--now",
                vectors["now"],
                input_bytes=payload.read_bytes(),
            )
        else:
            result = run_edge(
                "--config", str(config), "request", "check", f"--now={vectors['now']}", str(payload)
            )
        verdict = json.loads(result.stdout)
        assert set(verdict) == {"verdict", "reason", "location_match", "id"}
        if case["expect"] == "accepted":
            assert (result.returncode, verdict["verdict"]) == (0, "accepted"), case["name"]
            assert verdict["reason"] is None
            assert verdict["location_match"] is case["location_match"], case["name"]
        else:
            assert (result.returncode, verdict["verdict"]) == (1, "rejected"), case["name"]
            assert verdict["reason"] in case["expect"].split("|"), case["name"]
            assert verdict["location_match"] is None


def test_request_check_without_a_location_says_so(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(f'[device]\ndata_dir = "{tmp_path}"\n')
    result = run_edge("--config", str(config), "request", "check", input_bytes=b"{}")
    assert result.returncode == 2
    assert b"latitude" in result.stderr and b"Traceback" not in result.stderr


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """A config and a data dir holding ~4 s of virtual-camera footage from `edge run`."""
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[device]\ndata_dir = "{tmp_path / "data"}"\n'
        "[camera]\nwidth = 320\nheight = 180\nfps = 10\n[buffer]\nsegment_seconds = 1\n"
    )
    started = time.monotonic()
    result = run_edge("--config", str(config), "run", "--duration", "4")
    assert result.returncode == 0, result.stderr
    assert 3.5 < time.monotonic() - started < 60
    return config


def test_run_for_a_duration_then_status_and_export(recorded: Path, tmp_path: Path) -> None:
    status = run_edge("--config", str(recorded), "status", "--json")
    assert status.returncode == 0, status.stderr
    buffer = json.loads(status.stdout)["buffer"]
    assert buffer["segments"] >= 3 and buffer["bytes"] > 0
    assert buffer["oldest"] < buffer["newest"]
    text = run_edge("--config", str(recorded), "status")
    assert b"daemon:   not running" in text.stdout and b"segments" in text.stdout

    out = tmp_path / "clip.mp4"
    result = run_edge(
        "--config",
        str(recorded),
        "export",
        "--start",
        buffer["oldest"],
        "--end",
        buffer["newest"],
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # footage: the owner's alone
    assert not (tmp_path / ".clip.mp4.part").exists()
    frames = decode(out)
    times = [f.capture_time_ms for f in frames]
    assert len(frames) >= 35  # 4 s at 10 fps, less start-up
    assert times == sorted(times) and len(set(times)) == len(times)
    with av.open(str(out)) as container:  # remuxed, not re-encoded: still H.264
        assert container.streams.video[0].codec_context.name == "h264"
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "json", str(out)],
        capture_output=True,
        check=True,
    )
    assert json.loads(probe.stdout)["streams"][0]["codec_name"] == "h264"

    relative = run_edge(
        "--config",
        str(recorded),
        "export",
        "--start",
        "-1h",
        "--end=-59m",
        "-o",
        str(tmp_path / "none.mp4"),
    )
    assert relative.returncode == 1
    assert b"no footage" in relative.stderr and not (tmp_path / "none.mp4").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "--start", "yesterday", "--end", "-1m", "-o", "x.mp4"], b"--start"),
        (["export", "--start", "-2m", "--end", "-3m", "-o", "x.mp4"], b"after --start"),
        (["export", "--start", "-2m"], b"required"),
        (["approve", "abc"], b"not a request id"),
        (["frobnicate"], b"invalid choice"),
        (["audit", "verify", "--head", "zz"], b""),
    ],
)
def test_mistakes_get_one_clear_line(recorded: Path, args: list[str], message: bytes) -> None:
    result = run_edge("--config", str(recorded), *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stderr.count(b"\n") == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_keeps_the_last_segment(tmp_path: Path, signum: int) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[device]\ndata_dir = "{tmp_path / "data"}"\n'
        "[camera]\nwidth = 320\nheight = 180\nfps = 10\n[buffer]\nsegment_seconds = 10\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "--config", str(config), "run"],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    for line in process.stderr:  # wait until it says it records (no sleep standing in)
        if b"recording:" in line:
            break
    deadline = time.monotonic() + 30
    while not (tmp_path / "data" / "status.json").exists():
        assert time.monotonic() < deadline, "no status written"
        time.sleep(0.1)
    process.send_signal(signum)
    assert process.wait(timeout=30) == 0
    # segment_seconds is 10: everything recorded sits in the segment being written,
    # which a clean stop closes and keeps.
    status = json.loads(run_edge("--config", str(config), "status", "--json").stdout)
    assert status["buffer"]["segments"] == 1
    assert status["daemon"] is None  # it says it is no longer running


def test_keys_init_makes_private_keys_once_and_run_refuses_open_ones(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(f'[device]\ndata_dir = "{tmp_path / "data"}"\n')
    first = run_edge("--config", str(config), "keys", "init")
    assert first.returncode == 0, first.stderr
    keys_dir = tmp_path / "data" / "keys"
    private = sorted(p for p in keys_dir.iterdir() if not p.name.endswith(".pub"))
    assert private and all(p.stat().st_mode & 0o077 == 0 for p in private)
    before = {p.name: p.read_bytes() for p in private}
    second = run_edge("--config", str(config), "keys", "init")
    assert second.returncode == 0 and b"nothing changed" in second.stdout
    assert {p.name: p.read_bytes() for p in private} == before  # never overwritten
    private[0].chmod(0o644)
    refused = run_edge("--config", str(config), "run", "--duration", "1")
    assert refused.returncode == 1
    assert private[0].name.encode() in refused.stderr and b"chmod" in refused.stderr
    assert b"Traceback" not in refused.stderr
