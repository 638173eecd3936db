"""Class names left of a picture's rows: a white margin wide enough for every name, dark text centred on its row.

Shared by the quality report's ``samples.png`` and the contact sheet that
``synth.generate`` writes beside a store, so that both name their rows alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import ImageDraw, ImageFont

MIN_LABEL_WIDTH = 120
"""The margin's narrowest width in pixels; longer names widen it."""

FontType = ImageFont.ImageFont | ImageFont.FreeTypeFont


def label_width(names: Sequence[str], font: FontType, minimum: int = MIN_LABEL_WIDTH) -> int:
    """Width of a left margin that holds each of ``names`` drawn at x = 2 in ``font``, and at least ``minimum``."""
    return max([minimum, *(math.ceil(font.getlength(name)) + 8 for name in names)])


def draw_row_label(draw: ImageDraw.ImageDraw, name: str, top: int, row_height: int, font: FontType) -> None:
    """Write ``name`` in black at the left edge, about halfway down the row from ``top`` to ``top + row_height``."""
    draw.text((2, top + row_height // 2 - 6), name, fill="black", font=font)
