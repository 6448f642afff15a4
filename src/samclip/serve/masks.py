"""Masks on the wire: COCO run-length encodings and mask records with their boxes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..inference.rle import coco_rle as rle_encode
from ..inference.rle import coco_rle_decode as rle_decode


def mask_box(mask: np.ndarray) -> list[int]:
    """XYXY pixel-edge box of a mask (x1, y1 exclusive); ``[0, 0, 0, 0]`` when empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def mask_record(mask: np.ndarray, **extra: Any) -> dict[str, Any]:
    """``{"segmentation": RLE, "area": pixels, "box": XYXY edges, **extra}`` for one HxW bool mask."""
    mask = np.asarray(mask, dtype=bool)
    return {"segmentation": rle_encode(mask), "area": int(mask.sum()), "box": mask_box(mask), **extra}



__all__ = ["mask_box", "mask_record", "rle_decode", "rle_encode"]
