"""Semantic segmentation metrics (confusion matrix, mIoU with and without background) and a reader
for VOC-style data (RGB images + palettised / grey PNG label maps, 255 = ignore)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..merge.real_data import read_rgb_file


@dataclass
class ConfusionMatrix:
    """Accumulates a KxK confusion matrix (rows = ground truth, cols = prediction); class 0 = background."""

    num_classes: int
    ignore_index: int = 255
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """pred, target: HxW integer label maps of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
        valid = target != self.ignore_index
        t = target[valid].astype(np.int64)
        p = pred[valid].astype(np.int64)
        if t.size and (t.max() >= self.num_classes or p.max() >= self.num_classes or p.min() < 0):
            raise ValueError(f"labels outside 0..{self.num_classes - 1}")
        self.matrix += np.bincount(t * self.num_classes + p, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def iou(self) -> np.ndarray:
        """Per-class IoU (NaN for classes absent from both prediction and ground truth)."""
        tp = np.diag(self.matrix).astype(np.float64)
        denom = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / denom, np.nan)

    def summary(self, names: list[str] | None = None) -> dict:
        iou = self.iou()
        gt_present = self.matrix.sum(1) > 0
        out = {
            "miou": 100 * float(np.nanmean(np.where(gt_present, iou, np.nan))),
            "miou_no_background": 100 * float(np.nanmean(np.where(gt_present[1:], iou[1:], np.nan))),
            "pixel_accuracy": 100 * float(np.diag(self.matrix).sum() / max(1, self.matrix.sum())),
        }
        if names is not None:
            out["per_class_iou"] = {n: (None if np.isnan(v) else round(100 * float(v), 2))
                                    for n, v in zip(names, iou)}
        return out


def miou_of(matrices: np.ndarray) -> np.ndarray:
    """...xKxK confusion matrices (rows = ground truth) -> ... mIoU in %, over the classes present in each
    matrix's ground truth (as :meth:`ConfusionMatrix.summary`'s ``miou``)."""
    tp = np.diagonal(matrices, axis1=-2, axis2=-1).astype(np.float64)
    gt, pred = matrices.sum(-1), matrices.sum(-2)
    denom = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where((gt > 0) & (denom > 0), tp / denom, np.nan)
    return 100 * np.nanmean(iou, axis=-1)


def paired_bootstrap(first: np.ndarray, second: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """How sure a difference of mIoU is, from per-image confusion matrices of two methods on the same images
    (``first``, ``second``: NxKxK): the images are resampled with replacement ``n_boot`` times, the same
    images for both methods, and each resample's matrices summed. Returns the difference first - second on
    all images, its 95% interval over the resamples, and the share of resamples where first >= second."""
    if first.shape != second.shape or first.ndim != 3 or not len(first):
        raise ValueError(f"expected two NxKxK stacks of the same shape, got {first.shape} and {second.shape}")
    counts = np.random.default_rng(seed).multinomial(len(first), np.full(len(first), 1 / len(first)), size=n_boot)
    diff = miou_of(np.einsum("bn,nij->bij", counts, first)) - miou_of(np.einsum("bn,nij->bij", counts, second))
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return {"difference": float(miou_of(first.sum(0)) - miou_of(second.sum(0))), "ci95": [float(lo), float(hi)],
            "share_first_ge_second": float((diff >= 0).mean()), "resamples": n_boot, "images": len(first)}


def read_label_map(path: Path) -> np.ndarray:
    """A single-channel label map PNG (palette indices, 8- or 16-bit grey values are the ids) -> HxW; ValueError
    for other modes (RGB maps, 1-bit maps), which hold no ids as such."""
    with Image.open(path) as lab:
        if lab.mode not in ("P", "L", "I;16", "I"):
            raise ValueError(f"{path.name}: a {lab.mode} image is not a label map; save the class ids as a "
                             "palette or single-channel (8- or 16-bit) PNG")
        return np.asarray(lab)


def read_voc_folder(root: str | Path, split_file: str | None = None, limit: int | None = None):  # noqa: ANN201
    """Yield (name, HxWx3 uint8 image, HxW uint8 labels) from a VOC-style folder.

    Layout: ``JPEGImages/<name>.jpg`` and ``SegmentationClass/<name>.png`` (palette indices or grey
    values are the class ids; 255 = ignore); names from ``split_file`` (one per line) or all PNGs.
    """
    root = Path(root)
    img_dir, lab_dir = root / "JPEGImages", root / "SegmentationClass"
    if not lab_dir.is_dir():
        raise ValueError(f"{root}: no SegmentationClass/ folder (VOC layout expected)")
    if split_file:
        names = [n.strip() for n in Path(split_file).read_text().splitlines() if n.strip()]
    else:
        names = sorted(p.stem for p in lab_dir.glob("*.png"))
    if not names:
        why = "the split file lists none" if split_file else "no label PNGs in SegmentationClass/"
        raise ValueError(f"{root}: no images to evaluate ({why})")
    for name in names[:limit]:
        candidates = [img_dir / f"{name}{e}" for e in (".jpg", ".jpeg", ".png")]
        img_path = next((p for p in candidates if p.exists()), None)
        if img_path is None:
            raise ValueError(f"{root}: image for {name!r} not found in JPEGImages/")
        yield name, read_rgb_file(img_path), read_label_map(lab_dir / f"{name}.png")
