"""The virtual camera's time strip (../shared/spec/virtual-camera.md).

64 cells across the top of the frame, cell 0 the most significant bit: bits
63-16 the capture time in ms since the Unix epoch, bits 15-0 the frame
sequence number modulo 65,536. White (luma 255) is a 1, black (luma 0) a 0.
Drawn straight into the Y plane (chroma under it set neutral, so the cells are
pure grey levels), read back from decoded luma.
"""

from __future__ import annotations

import numpy as np

CELLS = 64
SEQUENCE_BITS = 16
MIN_WIDTH = 320
MIN_HEIGHT = 180
MAX_CAPTURE_TIME_MS = (1 << (CELLS - SEQUENCE_BITS)) - 1


def strip_height(height: int) -> int:
    return height // 24


def cell_bounds(i: int, width: int) -> tuple[int, int]:
    """The x range ``[x0, x1)`` of cell ``i``."""
    return (i * width) // CELLS, ((i + 1) * width) // CELLS


def encode_word(capture_time_ms: int, sequence: int) -> int:
    if not 0 <= capture_time_ms <= MAX_CAPTURE_TIME_MS:
        raise ValueError(f"capture time {capture_time_ms} ms does not fit in 48 bits")
    return (capture_time_ms << SEQUENCE_BITS) | (sequence % (1 << SEQUENCE_BITS))


def draw_strip(
    y_plane: np.ndarray,
    u_plane: np.ndarray,
    v_plane: np.ndarray,
    capture_time_ms: int,
    sequence: int,
) -> None:
    """Draws the strip in place. Planes are full-size Y and half-size U, V."""
    height, width = y_plane.shape
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise ValueError(f"frames must be at least {MIN_WIDTH}x{MIN_HEIGHT}, got {width}x{height}")
    word = encode_word(capture_time_ms, sequence)
    rows = strip_height(height)
    for i in range(CELLS):
        x0, x1 = cell_bounds(i, width)
        bit = (word >> (CELLS - 1 - i)) & 1
        y_plane[:rows, x0:x1] = 255 if bit else 0
    # Chroma rows covering any strip row: neutral, so encoding sees pure black and white.
    chroma_rows = (rows + 1) // 2
    u_plane[:chroma_rows] = 128
    v_plane[:chroma_rows] = 128


def read_strip(y_plane: np.ndarray) -> tuple[int, int]:
    """``(capture_time_ms, sequence mod 65536)`` from a decoded frame's luma.

    Reads each cell's centre pixel, a 1 where it is over 128, as the spec says.
    """
    height, width = y_plane.shape
    row = strip_height(height) // 2
    word = 0
    for i in range(CELLS):
        x0, x1 = cell_bounds(i, width)
        bit = 1 if int(y_plane[row, (x0 + x1 - 1) // 2]) > 128 else 0
        word = (word << 1) | bit
    return word >> SEQUENCE_BITS, word & ((1 << SEQUENCE_BITS) - 1)
