"""Zero-shot semantic segmentation on an images folder + a label-maps folder: ADE20K, COCO-Stuff, Cityscapes,
Pascal Context and VOC as their releases (or mmsegmentation's conversions) lay them out.

Images and label maps (PNG, one class id per pixel) are paired by file stem. What id 0 means differs between
datasets, and ``zero`` says which convention the maps follow:

- ``"background"`` (Pascal VOC): 0 is the background class, id k >= 1 is ``labels[k - 1]``; the model predicts
  a background class too (``semantic_segment(background=True)``);
- ``"class"`` (Cityscapes trainIds, COCO-Stuff 164k, Pascal Context 59): id k is ``labels[k]``, no background;
- ``"ignore"`` (ADE20K, mmsegmentation's ``reduce_zero_label``): 0 is unlabelled and ignored, id k >= 1 is
  ``labels[k - 1]``, no background.

``ignore_index`` (default 255) is never scored. Without a background class the model chooses among the labels
only (``background=False``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path

import numpy as np

from ..merge.real_data import IMAGE_EXTS, read_rgb_file
from ..models import SamClip
from ..predictor import Predictor
from .semseg import ConfusionMatrix, read_label_map

ZERO_CONVENTIONS = ("background", "class", "ignore")


def read_mask_folders(images: str | Path, masks: str | Path,
                      limit: int | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield (stem, HxWx3 uint8 image, HxW label map) for every label map in ``masks`` (sorted; searched
    recursively, paired with the image of the same stem under ``images``), at most ``limit``."""
    images, masks = Path(images), Path(masks)
    for folder, what in ((images, "images"), (masks, "label maps")):
        if not folder.is_dir():
            raise ValueError(f"{folder}: not a folder ({what} expected)")
    by_key: dict[tuple[Path, str], Path] = {}  # (folder relative to the root, stem) -> image
    for p in sorted(images.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTS:
            by_key.setdefault((p.relative_to(images).parent, p.stem), p)
    stems: dict[str, list[Path]] = {}
    by_dir: dict[Path, set[str]] = {}
    for (rel, stem), p in by_key.items():
        stems.setdefault(stem, []).append(p)
        by_dir.setdefault(rel, set()).add(stem)
    maps = sorted(p for p in masks.rglob("*.png"))
    if not maps:
        raise ValueError(f"{masks}: no PNG label maps")
    for mpath in maps[:limit]:
        rel = mpath.relative_to(masks).parent
        stem = _image_stem(mpath.stem, by_dir.get(rel, set())) or _image_stem(mpath.stem, stems.keys())
        if stem is None:
            raise ValueError(f"{images}: no image for the label map {mpath.relative_to(masks)}")
        image_path = by_key.get((rel, stem))
        if image_path is None:  # the maps are laid out differently from the images: the stem must be unique
            if len(stems[stem]) > 1:
                raise ValueError(f"{mpath.relative_to(masks)}: several images named {stem} "
                                 f"({', '.join(str(q.relative_to(images)) for q in stems[stem][:3])}) and none in "
                                 f"the label map's own folder {rel}; lay the images out as the maps are")
            image_path = stems[stem][0]
        image = read_rgb_file(image_path)
        labels = read_label_map(mpath)
        if labels.shape != image.shape[:2]:
            raise ValueError(f"{mpath.name}: label map {labels.shape} and image {image_path.name} "
                             f"{image.shape[:2]} differ in size")
        yield stem, image, labels


def _image_stem(mask_stem: str, by_stem: AbstractSet[str]) -> str | None:
    """The image of a label map: the same stem, or Cityscapes' ``<city>_<seq>_<frame>_gtFine_labelTrainIds``
    -> ``<city>_<seq>_<frame>_leftImg8bit``."""
    if mask_stem in by_stem:
        return mask_stem
    if "_gtFine" in mask_stem:
        stem = mask_stem.split("_gtFine")[0] + "_leftImg8bit"
        return stem if stem in by_stem else None
    return None


def to_classes(labels: np.ndarray, zero: str, n_labels: int, ignore_index: int) -> np.ndarray:
    """A label map in the ``zero`` convention -> class indices of the confusion matrix (``ignore_index`` kept):
    with a background class, 0 = background and k = ``labels[k - 1]``; without, k = ``labels[k]``."""
    if zero not in ZERO_CONVENTIONS:
        raise ValueError(f"zero must be one of {ZERO_CONVENTIONS}, got {zero!r}")
    out = labels.astype(np.int64)
    ignored = out == ignore_index
    if zero == "ignore":
        ignored |= out == 0
        out = out - 1
    n_classes = n_labels + (zero == "background")
    bad = ~ignored & ((out < 0) | (out >= n_classes))
    if bad.any():
        raise ValueError(f"label map ids outside the {n_labels} labels (convention {zero!r}): "
                         f"{sorted(set(labels[bad].tolist()))[:5]}")
    out[ignored] = ignore_index
    return out


def folder_semseg_benchmark(model: SamClip, images: str | Path, masks: str | Path, labels: Sequence[str],
                            zero: str = "background", ignore_index: int = 255, refine: bool = True,
                            limit: int | None = None) -> dict:
    """mIoU (and pixel accuracy, per-class IoU) of ``semantic_segment(labels, refine=refine)`` over the pairs."""
    labels = list(labels)
    if not labels:
        raise ValueError("no class names")
    if zero not in ZERO_CONVENTIONS:
        raise ValueError(f"zero must be one of {ZERO_CONVENTIONS}, got {zero!r}")
    background = zero == "background"
    pred = Predictor(model)
    cm = ConfusionMatrix(len(labels) + background, ignore_index=ignore_index)
    n, seconds = 0, 0.0
    for _, image, lab in read_mask_folders(images, masks, limit):
        target = to_classes(lab, zero, len(labels), ignore_index)
        t0 = time.perf_counter()
        pred.set_image(image)
        label_map = pred.semantic_segment(labels, refine=refine, background=background).label_map
        seconds += time.perf_counter() - t0
        cm.update(label_map.astype(np.int64) - (0 if background else 1), target)
        n += 1
    names = (["background"] if background else []) + labels
    summary = cm.summary(names)
    if not background:
        summary.pop("miou_no_background")
    return {"benchmark": "semseg", "images": str(images), "masks": str(masks), "zero": zero,
            "ignore_index": ignore_index, "refine": refine, "n_images": n, "n_classes": len(names),
            "seconds_per_image": seconds / max(1, n), **summary}
