"""Where the stamp goes: the page's visible box, its rotation and the stamp's rectangle.

The contract places the stamp at ``x``, ``y`` points from the bottom-left corner of the page *as
displayed*: the visible box (CropBox clipped to the MediaBox) turned by the page's ``/Rotate``.
A PDF rectangle lives in unrotated user space, so for a rotated page the requested square is
mapped back into user space here, and the appearance is counter-rotated (see ``appearance``) so
the stamp reads upright. Invalid ``/Rotate`` values (not a multiple of 90) are ignored, as
viewers do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Box = tuple[float, float, float, float]
"""A rectangle as ``(x0, y0, x1, y1)`` with ``x0 <= x1`` and ``y0 <= y1``."""


def normalized(values: Sequence[float]) -> Box:
    """A PDF rectangle (any two opposite corners) as a ``Box``; ValueError if it is not four numbers."""
    if len(values) != 4:
        raise ValueError("a rectangle needs four numbers")
    x0, y0, x1, y1 = (float(v) for v in values)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def visible_box(media: Box, crop: Box | None) -> Box:
    """The part of the page a viewer shows: the CropBox clipped to the MediaBox."""
    if crop is None:
        return media
    box = max(media[0], crop[0]), max(media[1], crop[1]), min(media[2], crop[2]), min(media[3], crop[3])
    return box if box[0] < box[2] and box[1] < box[3] else media


def rotation(value: float) -> int:
    """The page's clockwise display rotation in {0, 90, 180, 270}."""
    turns = int(value)
    return turns % 360 if turns == value and turns % 90 == 0 else 0


def displayed_size(box: Box, rotate: int) -> tuple[float, float]:
    """Width and height of the page as displayed."""
    width, height = box[2] - box[0], box[3] - box[1]
    return (height, width) if rotate in (90, 270) else (width, height)


def stamp_rect(box: Box, rotate: int, x: float, y: float, size: float) -> Box | None:
    """The stamp square in user space, or None when it does not lie wholly inside the displayed page."""
    shown_w, shown_h = displayed_size(box, rotate)
    if not all(math.isfinite(v) for v in (x, y, size)) or size <= 0:
        return None
    if not (x >= 0 and y >= 0 and x + size <= shown_w and y + size <= shown_h):
        return None
    width, height = box[2] - box[0], box[3] - box[1]
    u, v = {
        0: (x, y),
        90: (width - y - size, x),
        180: (width - x - size, height - y - size),
        270: (y, height - x - size),
    }[rotate]
    return box[0] + u, box[1] + v, box[0] + u + size, box[1] + v + size
