"""Text -> instances on the scene world: :meth:`Predictor.segment_text` against ground-truth instances.

Every scene is asked for each of the 12 shapes in turn (the other 11 as the vocabulary of distractors); a
predicted instance is a true positive when its mask has IoU > 0.5 with a not yet matched ground-truth
instance of that shape (predictions taken in their returned order, best score first). Precision, recall
and F1 are pooled over all (scene, phrase) pairs: with and without the CLIP-head verification of each mask
(``verify``), and with the everything mode's masks as candidates (``candidates="everything"``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import SHAPES, generate_scene, split_seeds
from ..inference.everything import mask_iou
from ..models import SamClip
from ..predictor import Instance, Predictor

MATCH_IOU = 0.5
#: the benchmark's third row: candidates from the everything mode, named by their default read (zoom + crop)
EVERYTHING = {"candidates": "everything"}


def match_instances(predicted: list[Instance], truth: list[np.ndarray], iou: float = MATCH_IOU) -> int:
    """Greedy one-to-one matching in prediction order: the number of predictions whose mask has IoU > ``iou``
    with a ground-truth mask (HxW bool) not matched before."""
    if not predicted or not truth:
        return 0
    ious = mask_iou(torch.from_numpy(np.stack([i.mask for i in predicted])), torch.from_numpy(np.stack(truth)))
    free = torch.ones(len(truth), dtype=torch.bool)
    hits = 0
    for row in ious > iou:  # predictions in their order; each takes the first free instance it overlaps
        match = (row & free).nonzero()
        if len(match):
            free[match[0, 0]] = False
            hits += 1
    return hits


def _scores(hits: int, n_pred: int, n_true: int) -> dict[str, float | int]:
    p = hits / n_pred if n_pred else 0.0
    r = hits / n_true if n_true else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": 100 * p, "recall": 100 * r, "f1": 100 * f1, "n_predicted": n_pred}


def segment_text_benchmark(merged: SamClip, n_images: int = 60, size: int | None = None,
                           split: str = "test") -> dict:
    """``{"verified": {...}, "unverified": {...}, "n_instances", "n_images"}``; each entry has precision,
    recall, F1 (percent) and the number of predicted instances, over ``n_images`` scenes of ``split``."""
    size = size or merged.img_size
    labels = list(SHAPES)
    pred = Predictor(merged)
    counts = {"verified": [0, 0], "unverified": [0, 0], "everything": [0, 0]}  # hits, predictions
    n_true = 0
    for seed in split_seeds(split, n_images, start=800_000):
        scene = generate_scene(seed, size)
        pred.set_image(scene.image)
        for phrase in labels:
            truth = [m for o, m in zip(scene.objects, scene.instance_masks) if o.category == phrase and m.any()]
            n_true += len(truth)
            vocabulary = [name for name in labels if name != phrase]
            for key, kw in (("verified", {}), ("unverified", {"verify": False}), ("everything", EVERYTHING)):
                found = pred.segment_text(phrase, vocabulary=vocabulary, **kw)
                counts[key][0] += match_instances(found, truth)
                counts[key][1] += len(found)
    return {**{k: _scores(hits, n_pred, n_true) for k, (hits, n_pred) in counts.items()},
            "n_instances": n_true, "n_images": n_images}
