"""The time strip, exactly as ../shared/spec/virtual-camera.md draws and reads it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.capture import timestrip
from edge.capture.types import new_i420


def planes(width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.full((height, width), 77, dtype=np.uint8)
    u = np.full((height // 2, width // 2), 30, dtype=np.uint8)
    v = np.full((height // 2, width // 2), 200, dtype=np.uint8)
    return y, u, v


@settings(max_examples=60, deadline=None)
@given(
    capture_ms=st.integers(min_value=0, max_value=timestrip.MAX_CAPTURE_TIME_MS),
    sequence=st.integers(min_value=0, max_value=10**9),
    size=st.sampled_from([(320, 180), (322, 182), (640, 360), (1280, 720), (1920, 1080)]),
)
def test_what_is_drawn_reads_back(capture_ms: int, sequence: int, size: tuple[int, int]) -> None:
    y, u, v = planes(*size)
    timestrip.draw_strip(y, u, v, capture_ms, sequence)
    assert timestrip.read_strip(y) == (capture_ms, sequence % 65536)


def test_cells_follow_the_spec_geometry() -> None:
    width, height = 1000, 240  # 1000/64 is not whole: cells are 15 or 16 pixels wide
    y, u, v = planes(width, height)
    word = 0b1011 << 60  # cell 0 = bit 63 = 1, cell 1 = 0, cells 2 and 3 = 1
    timestrip.draw_strip(y, u, v, word >> 16, 0)
    rows = height // 24
    assert timestrip.cell_bounds(0, width) == (0, 15)
    assert timestrip.cell_bounds(1, width) == (15, 31)
    assert timestrip.cell_bounds(63, width) == (984, 1000)
    assert (y[:rows, 0:15] == 255).all()
    assert (y[:rows, 15:31] == 0).all()
    assert (y[:rows, 31:62] == 255).all()
    assert (y[:rows, 62:] == 0).all()
    assert (y[rows:] == 77).all(), "the strip stops at floor(H/24)"
    assert (u[: (rows + 1) // 2] == 128).all() and (v[: (rows + 1) // 2] == 128).all()
    assert (u[(rows + 1) // 2 :] == 30).all(), "chroma below the strip is left alone"


def test_reading_takes_a_bit_as_one_only_over_128() -> None:
    y, u, v = planes(320, 180)
    timestrip.draw_strip(y, u, v, 1, 0)  # only bit 16 (cell 47) set
    x0, x1 = timestrip.cell_bounds(47, 320)
    y[: 180 // 24, x0:x1] = 128
    assert timestrip.read_strip(y) == (0, 0)
    y[: 180 // 24, x0:x1] = 129
    assert timestrip.read_strip(y) == (1, 0)


def test_refuses_frames_below_320x180_and_times_beyond_48_bits() -> None:
    with pytest.raises(ValueError, match="at least 320x180"):
        timestrip.draw_strip(*planes(318, 180), 0, 0)
    with pytest.raises(ValueError, match="48 bits"):
        timestrip.draw_strip(*planes(320, 180), 1 << 48, 0)


def test_works_on_the_raw_frame_layout() -> None:
    data = new_i420(320, 180)
    data[:] = 90
    flat = data.reshape(-1)
    y = data[:180]
    u = flat[320 * 180 : 320 * 180 * 5 // 4].reshape(90, 160)
    v = flat[320 * 180 * 5 // 4 :].reshape(90, 160)
    timestrip.draw_strip(y, u, v, 1_767_225_600_123, 70_000)
    assert timestrip.read_strip(data[:180]) == (1_767_225_600_123, 70_000 % 65536)
