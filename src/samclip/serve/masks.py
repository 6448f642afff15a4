"""Masks on the wire: COCO run-length encodings and mask records with their boxes."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    pass


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """HxW bool -> COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools compressed string)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as err:  # pragma: no cover - dependency of the serve/coco extras
        raise RuntimeError("COCO RLE output needs pycocotools: pip install pycocotools") from err
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (``counts`` str or bytes) -> HxW bool."""
    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():  # pycocotools' __array__ without `copy` under numpy 2
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"]}).astype(bool)


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

