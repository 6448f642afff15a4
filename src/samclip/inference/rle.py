"""Run-length encodings of HxW bool masks: COCO's compressed form (pycocotools) and segment-anything's
uncompressed one. Both run down the columns (column-major), starting with a run of 0s (possibly empty)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def _mask_utils() -> Any:  # noqa: ANN401 - the pycocotools module
    try:
        from pycocotools import mask as mask_utils
    except ImportError as err:
        raise RuntimeError("COCO RLE needs pycocotools: pip install 'samclip[coco]'") from err
    return mask_utils


def coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """HxW bool -> COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools' compressed string)."""
    rle = _mask_utils().encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (``counts`` str or bytes, or a list of run lengths) -> HxW bool."""
    mask_utils = _mask_utils()
    size = [int(v) for v in rle["size"]]
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed: pycocotools compresses it first
        counts = mask_utils.frPyObjects({"size": size, "counts": counts}, *size)["counts"]
    with warnings.catch_warnings():  # pycocotools' __array__ without `copy` under numpy 2
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode({"size": size, "counts": counts}).astype(bool)


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """HxW bool -> ``{"size": [H, W], "counts": [run lengths]}``, segment-anything's ``uncompressed_rle``
    (column-major runs, the first one of 0s); no dependency."""
    mask = np.asarray(mask, dtype=bool)
    flat = mask.ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


__all__ = ["coco_rle", "coco_rle_decode", "uncompressed_rle"]
