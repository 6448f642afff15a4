"""Zero-shot classification on an image-folder dataset: ImageNet's validation layout, one subfolder per class.

Classes are the subfolders in sorted order (ImageNet's wnid folders sort into its class-id order). Their names
come from ``labels`` in that order (ImageNet needs them: its folders are wnids), else from the folder names
with ``_`` read as a space. Each class embedding is the prompt ensemble over ``templates`` (default: the merged
model's ``config.templates``, else :data:`DEFAULT_TEMPLATES`, the single template CLIP reports as its baseline;
pass an ensemble for the published numbers). Images are read on demand, centre-cropped to a square and resized
to each model's input size.

The merged model reads each image as its classification does (the CLIP head at ``clip_size``, with the model's
test-time augmentation views when its config has them), on the centre crop that CLIP's evaluation and the
merge's D_CLIP use (:meth:`samclip.Predictor.classify` pads the whole image instead). A CLIP teacher given
beside it is measured on the same images and class embeddings, so the report carries the distillation margin.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.captions import fix_articles
from ..merge.real_data import IMAGE_EXTS, ImageIndex, LazyImages, index_images
from ..models import CLIP, SamClip
from .zeroshot import ImageEncoder, TextEncoder, class_embeddings

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
TOP_K = 5


def read_class_folders(root: str | Path, limit: int | None = None) -> tuple[list[str], ImageIndex, np.ndarray]:
    """(class folder names in sorted order, where each image is, N labels); at most ``limit`` images, taken
    round-robin over the classes so that every class is represented."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (an image folder with one subfolder per class is expected)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [index_images(f) for f in folders]
    kept = [(f.name, refs) for f, refs in zip(folders, per_class) if len(refs)]
    if not kept:
        raise ValueError(f"{root}: no class subfolders with images (extensions {sorted(IMAGE_EXTS)})")
    if len(kept) < len(folders):
        empty = [f.name for f, refs in zip(folders, per_class) if not len(refs)]
        raise ValueError(f"{root}: class folders without images: {', '.join(empty[:5])}")
    order = [(c, j) for j in range(max(len(r) for _, r in kept)) for c in range(len(kept)) if j < len(kept[c][1])]
    if limit is not None:
        order = order[:limit]
    order.sort()  # class order, then file order
    refs = ImageIndex.from_refs(kept[c][1][j] for c, j in order)
    labels = np.array([c for c, _ in order], dtype=np.int64)
    return [name for name, _ in kept], refs, labels


def read_names(path: str | Path) -> list[str]:
    """The non-empty lines of a names file (class names, templates), stripped."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def class_names(folders: list[str], labels: Sequence[str] | None) -> list[str]:
    """The class names (given, or the folder names with ``_`` as a space): distinct to the text encoder (not
    ``Cat`` and ``cat``, nor ``a_b`` and ``a b``, which would be one text embedding for two classes)."""
    from ..predictor.checks import check_labels

    if labels is None:
        return check_labels([f.replace("_", " ") for f in folders], "the class folders' names")
    names = [str(x).strip() for x in labels]
    if len(names) != len(folders):
        raise ValueError(f"{len(names)} class names for {len(folders)} class folders; give one name per folder, "
                         "in sorted folder order")
    if any(not n for n in names):
        raise ValueError("empty class name")
    return check_labels(names, "the class names")


@torch.no_grad()
def _predictions(encode_images: ImageEncoder, classes: torch.Tensor, images: LazyImages, batch: int,
                 desc: str) -> torch.Tensor:
    top = []
    for i in tqdm(range(0, len(images), batch), desc=desc, unit="batch", disable=None, leave=False):
        emb = F.normalize(encode_images(images[np.arange(i, min(i + batch, len(images)))]).float(), dim=-1)
        top.append((emb @ classes.T).topk(min(TOP_K, len(classes)), dim=-1).indices)
    return torch.cat(top)


def _scores(top: torch.Tensor, labels: np.ndarray, n_classes: int) -> dict[str, float]:
    y = torch.as_tensor(labels)[:, None]
    hit1 = (top[:, :1] == y).any(1).float()
    per_class = [hit1[y[:, 0] == c].mean().item() for c in range(n_classes) if (y[:, 0] == c).any()]
    return {"top1": 100 * hit1.mean().item(), "top5": 100 * (top == y).any(1).float().mean().item(),
            "mean_per_class_top1": 100 * float(np.mean(per_class))}


class ZeroShotSet:
    """An image-folder classification set, indexed once, scored for any pair of encoders (the merge's validation
    reads it at every eval interval): ``score(encoders, size)`` -> top-1 / top-5 / mean per-class top-1."""

    def __init__(self, root: str | Path, labels: Sequence[str] | None = None,
                 templates: Sequence[str] = DEFAULT_TEMPLATES, limit: int | None = None, batch: int = 64) -> None:
        folders, self.refs, self.labels = read_class_folders(root, limit)
        self.names = class_names(folders, labels)
        if not templates or any(not isinstance(t, str) or t.count("{}") != 1 for t in templates):
            raise ValueError("every template needs one {} for the class name")
        from ..predictor.checks import check_templates

        self.templates = check_templates(templates)  # also: no other {field} or a lone brace
        self.root, self.batch = str(root), batch

    def prompts(self, name: str) -> list[str]:
        return [fix_articles(t.format(name)) for t in self.templates]

    def score(self, encoders: tuple[ImageEncoder, TextEncoder], size: int, desc: str = "zero-shot") -> dict:
        enc_img, enc_txt = encoders
        classes = class_embeddings(enc_txt, self.names, self.prompts)
        top = _predictions(enc_img, classes, LazyImages(self.refs, size), self.batch, desc)
        return _scores(top, self.labels, len(self.names))


def classification_benchmark(merged: SamClip, root: str | Path, labels: Sequence[str] | None = None,
                             templates: Sequence[str] | None = None, clip_teacher: CLIP | None = None,
                             limit: int | None = None, batch: int = 64) -> dict:
    """Zero-shot top-1 / top-5 / mean per-class top-1 (percent) of ``merged`` (and ``clip_teacher``)."""
    from ..merge.run import merged_encoders
    from ..teachers.clip_teacher import clip_encoders

    data = ZeroShotSet(root, labels, tuple(templates or merged.config.templates or DEFAULT_TEMPLATES), limit, batch)
    cfg = merged.config
    views = cfg.classify_views() if cfg.has_tta else ((cfg.clip_size, False),)
    models: list[tuple[str, tuple[ImageEncoder, TextEncoder], int]] = [
        ("merged", merged_encoders(merged, cfg.clip_size, views=views), max(s for s, _ in views))]
    if clip_teacher is not None:
        if clip_teacher.tokenizer is None:
            raise ValueError("the CLIP teacher has no tokenizer")
        models.append(("clip_teacher", clip_encoders(clip_teacher, clip_teacher.tokenizer),
                       clip_teacher.config.vision.image_size))
    result: dict = {"benchmark": "classify", "data": str(root), "n_images": len(data.labels),
                    "n_classes": len(data.names), "templates": list(data.templates),
                    "merged_views": [list(v) for v in views]}
    for key, encoders, size in models:
        result[key] = data.score(encoders, size, key)
    if clip_teacher is not None:
        result["merged_minus_teacher_top1"] = result["merged"]["top1"] - result["clip_teacher"]["top1"]
    return result
