"""Fixtures shared by every test module."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker import MosquittoBroker
from uploadservers import TusServer, require_tus_server

REPO_ROOT = Path(__file__).resolve().parent.parent
# The spec and its vectors live beside the checkout (CI lays shared/ there too).
SHARED_DIR = Path(os.environ.get("EDGE_SHARED_DIR", REPO_ROOT.parent / "shared"))
VECTORS_PATH = SHARED_DIR / "spec" / "vectors" / "assist-request-v1.json"


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Writes a config whose data_dir is a fresh temporary folder, plus the given TOML."""

    def write(extra_toml: str = "", *, data_dir: Path | None = None) -> Path:
        data = data_dir if data_dir is not None else tmp_path / "data"
        path = tmp_path / "edge.toml"
        base = f'[device]\ndata_dir = "{data}"\n' if "[device]" not in extra_toml else ""
        path.write_text(base + extra_toml)
        return path

    return write


def run_edge(
    *args: str,
    env: dict[str, str] | None = None,
    input_bytes: bytes | None = None,
    timeout_s: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """Runs the real `edge` command in a child process, as a user would."""
    full_env = dict(os.environ)
    full_env.pop("EDGE_CONFIG", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        env=full_env,
        input=input_bytes,
        timeout=timeout_s,
        cwd=REPO_ROOT,
        check=False,
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A real mosquitto on a free port, for this test alone."""
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def tus(tmp_path: Path) -> Iterator[TusServer]:
    """The tus project's own server (Node.js) on a free port, storing under tmp_path."""
    require_tus_server()
    server = TusServer(tmp_path / "uploads")
    server.start()
    try:
        yield server
    finally:
        server.stop()
