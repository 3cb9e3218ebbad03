"""The virtual camera's picture, drawn directly in I420 with numpy.

No BGR and no colour conversion: converting costs as much as encoding (see
design.md). Everything expensive (the textured background, the glyphs) is
made once; a frame is a few slice copies and fills.
"""

from __future__ import annotations

import time

import numpy as np

from edge.capture import timestrip

# 5x7 glyphs for the clock ("#" lit).
_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
    "1": ("  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "2": (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
    "3": ("#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "),
    "4": ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
    "5": ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
    "6": ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
    "7": ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
    "8": (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
    "9": (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
    ":": ("     ", "  #  ", "  #  ", "     ", "  #  ", "  #  ", "     "),
    "-": ("     ", "     ", "     ", " ### ", "     ", "     ", "     "),
    ".": ("     ", "     ", "     ", "     ", "     ", " ##  ", " ##  "),
    " ": ("     ",) * 7,
    "U": ("#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "T": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "),
    "C": (" ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### "),
}
_GLYPH_W, _GLYPH_H = 5, 7


def _glyph_mask(char: str, scale: int) -> np.ndarray:
    rows = _GLYPHS[char]
    small = np.array([[c == "#" for c in row] for row in rows], dtype=bool)
    return np.kron(small, np.ones((scale, scale), dtype=bool))


def format_clock(capture_time_ms: int) -> str:
    seconds, ms = divmod(capture_time_ms, 1000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{ms:03d} UTC"


class Scene:
    """Draws frame n of the scene into an I420 buffer. Used from one thread."""

    def __init__(self, width: int, height: int, fps: float) -> None:
        if width < timestrip.MIN_WIDTH or height < timestrip.MIN_HEIGHT:
            raise ValueError(
                f"the virtual camera needs at least {timestrip.MIN_WIDTH}x{timestrip.MIN_HEIGHT},"
                f" got {width}x{height}"
            )
        self.width = width
        self.height = height
        self._fps = fps
        # Background: a texture wider than the frame that pans, so the encoder has real
        # motion to code everywhere (not a static picture that costs nothing).
        # Built row by row in uint8: whole-frame int64 temporaries would cost tens of MB of
        # peak memory (a Pi Zero 2 W has 512 MB) for a picture made once.
        self._pan_px = width // 2
        texture_w = width + self._pan_px
        stripe_px = max(8, width // 40)
        # Diagonal stripes: row r is row 0 shifted by r. Values stay within 64..231 (video range).
        stripes = ((np.arange(texture_w + height) // stripe_px) % 2 * 48).astype(np.uint8)
        noise = np.random.default_rng(1).integers(0, 24, (height, texture_w), dtype=np.uint8)
        self._texture_y = noise
        for r in range(height):
            self._texture_y[r] += stripes[r : r + texture_w] + np.uint8(64 + (r * 96) // height)
        ch, cw = height // 2, width // 2
        self._u = np.broadcast_to(
            (np.arange(cw)[None, :] * 80 // cw + 88).astype(np.uint8), (ch, cw)
        ).copy()
        self._v = np.broadcast_to(
            (np.arange(ch)[:, None] * 80 // ch + 88).astype(np.uint8), (ch, cw)
        ).copy()
        self._scale = max(1, height // 120)
        self._glyphs = {c: _glyph_mask(c, self._scale) for c in _GLYPHS}
        self._box = max(16, height // 6) & ~1  # even, so chroma lines up

    def draw(self, out: np.ndarray, n: int, capture_time_ms: int) -> None:
        """Fills ``out`` (the RawFrame layout) with frame ``n``."""
        w, h = self.width, self.height
        y = out[:h]
        flat = out.reshape(-1)
        u = flat[w * h : w * h * 5 // 4].reshape(h // 2, w // 2)
        v = flat[w * h * 5 // 4 : w * h * 3 // 2].reshape(h // 2, w // 2)
        t_s = n / self._fps
        offset = int(t_s * 40) % self._pan_px
        y[:] = self._texture_y[:, offset : offset + w]
        u[:] = self._u
        v[:] = self._v
        # Two boxes bouncing across the frame, one orange, one blue.
        self._box_at(
            y,
            u,
            v,
            self._bounce(t_s * 0.31, w - self._box),
            self._bounce(t_s * 0.23, h - self._box),
            170,
            60,
            200,
        )
        self._box_at(
            y,
            u,
            v,
            self._bounce(t_s * 0.17 + 0.5, w - self._box),
            self._bounce(t_s * 0.41 + 0.3, h - self._box),
            90,
            200,
            100,
        )
        self._text(y, u, v, format_clock(capture_time_ms), h - (_GLYPH_H + 3) * self._scale)
        timestrip.draw_strip(y, u, v, capture_time_ms, n)

    @staticmethod
    def _bounce(phase: float, span: int) -> int:
        """A triangle wave over [0, span], even values only."""
        x = phase % 2.0
        pos = x if x <= 1.0 else 2.0 - x
        return int(pos * span) & ~1

    def _box_at(
        self,
        y: np.ndarray,
        u: np.ndarray,
        v: np.ndarray,
        x0: int,
        y0: int,
        luma: int,
        cb: int,
        cr: int,
    ) -> None:
        size = self._box
        y0 = max(y0, timestrip.strip_height(self.height) + 2) & ~1
        y[y0 : y0 + size, x0 : x0 + size] = luma
        u[y0 // 2 : (y0 + size) // 2, x0 // 2 : (x0 + size) // 2] = cb
        v[y0 // 2 : (y0 + size) // 2, x0 // 2 : (x0 + size) // 2] = cr

    def _text(self, y: np.ndarray, u: np.ndarray, v: np.ndarray, text: str, top: int) -> None:
        s = self._scale
        advance = (_GLYPH_W + 1) * s
        left = 2 * s
        right = min(self.width, left + advance * len(text) + s)
        top &= ~1
        bottom = min(self.height, top + (_GLYPH_H + 2) * s) & ~1
        # A dark box behind the text keeps it readable over the moving picture.
        y[top:bottom, left:right] = 16
        u[top // 2 : bottom // 2, left // 2 : right // 2] = 128
        v[top // 2 : bottom // 2, left // 2 : right // 2] = 128
        x = left + s
        for char in text:
            mask = self._glyphs[char]
            if x + mask.shape[1] > self.width:
                break
            region = y[top + s : top + s + mask.shape[0], x : x + mask.shape[1]]
            region[mask[: region.shape[0]]] = 235
            x += advance
