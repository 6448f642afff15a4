"""The per-image tasks shared by the HTTP service and the CLI: prompt / label validation, then one
Predictor call per task, returned as a :class:`~samclip.serve.render.TaskResult`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.shapes import SHAPES
from ..predictor.checks import check_text, label_key

if TYPE_CHECKING:  # pragma: no cover
    from ..predictor import Predictor

from .masks import mask_record
from .render import MASK_COLOUR, MAX_INSTANCES, TaskResult, legend_entry, paint_instances

#: the default vocabulary (the scene world's 12 shape names, in category-id order)
DEFAULT_VOCABULARY: tuple[str, ...] = tuple(SHAPES)


class PromptError(ValueError):
    """A prompt is malformed or outside the image: HTTP 422."""


class TooManyPrompts(PromptError):
    """More prompts (points + box, or text labels) than the configured maximum: HTTP 422."""


def parse_labels(text: str | Sequence[str] | None, what: str = "labels") -> list[str]:
    """``"a, b,c"`` (or a list) -> ``["a", "b", "c"]``; whitespace stripped, empty entries dropped,
    duplicates dropped (first kept; names that differ only in case or spacing are duplicates, as the text encoder
    reads them alike). PromptError when nothing is left or an entry is not valid text."""
    items = text.split(",") if isinstance(text, str) else list(text or [])
    out: list[str] = []
    keys: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise PromptError(f"every entry of {what} must be a string, got {item!r}")
        s = " ".join(item.split())
        if not s or label_key(s) in keys:
            continue
        try:
            check_text(s, f"an entry of {what}")
        except ValueError as err:
            raise PromptError(str(err)) from None
        keys.add(label_key(s))
        out.append(s)
    if not out:
        raise PromptError(f"{what} is empty; give at least one comma-separated class name")
    return out


def _finite(v: Any, what: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise PromptError(f"{what} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise PromptError(f"{what} must be finite, got {v!r}")
    return f


def check_prompts(points: Sequence[Sequence[float]] | None, point_labels: Sequence[int] | None,
                  box: Sequence[float] | None, size: tuple[int, int], *, max_prompts: int | None = None,
                  required: bool = True) -> dict[str, Any]:
    """Validate point / box prompts against the ORIGINAL image ``size = (H, W)``.

    ``points``: (x, y) pairs; ``point_labels``: 1 foreground / 0 background (default all 1);
    ``box``: XYXY. Every coordinate must satisfy ``0 <= x <= W``, ``0 <= y <= H``; otherwise
    :class:`PromptError` (no clipping). ``max_prompts`` bounds ``len(points) + (box given)``
    (:class:`TooManyPrompts`). Returns ``{"points": [[x, y]...] | None, "point_labels": [...] | None,
    "box": [x0, y0, x1, y1] | None}``.
    """
    h, w = size
    pts = None if points is None else list(points)
    n = (len(pts) if pts else 0) + (box is not None)
    if max_prompts is not None and n > max_prompts:
        raise TooManyPrompts(f"too many prompts: {n} (points + box) > the limit of {max_prompts}")
    out_pts = out_lbl = None
    if pts:
        out_pts = []
        for i, p in enumerate(pts):
            if isinstance(p, str) or len(p) != 2:
                raise PromptError(f"point {i} must be (x, y), got {p!r}")
            x, y = _finite(p[0], f"point {i} x"), _finite(p[1], f"point {i} y")
            if not (0 <= x <= w and 0 <= y <= h):
                raise PromptError(f"point {i} (x={x:g}, y={y:g}) is outside the {w}x{h} image "
                                  f"(need 0 <= x <= {w}, 0 <= y <= {h}; original-image pixels)")
            out_pts.append([x, y])
        labels = [1] * len(out_pts) if point_labels is None else list(point_labels)
        if len(labels) != len(out_pts):
            raise PromptError(f"point_labels has {len(labels)} entries for {len(out_pts)} points")
        for i, v in enumerate(labels):
            if v not in (0, 1) or isinstance(v, bool):
                raise PromptError(f"point_labels[{i}] must be 1 (foreground) or 0 (background), got {v!r}")
        out_lbl = [int(v) for v in labels]
    elif point_labels:
        raise PromptError("point_labels given without points")
    out_box = None
    if box is not None:
        b = list(box)
        if len(b) != 4:
            raise PromptError(f"box must be XYXY [x0, y0, x1, y1], got {box!r}")
        x0, y0, x1, y1 = (_finite(v, "box coordinate") for v in b)
        if x1 < x0 or y1 < y0:
            raise PromptError(f"box must be XYXY with x0 <= x1 and y0 <= y1, got {b}")
        if not (0 <= x0 and x1 <= w and 0 <= y0 and y1 <= h):
            raise PromptError(f"box {b} is outside the {w}x{h} image (need 0 <= x <= {w}, 0 <= y <= {h})")
        out_box = [x0, y0, x1, y1]
    if required and out_pts is None and out_box is None:
        raise PromptError("give at least one point or a box")
    return {"points": out_pts, "point_labels": out_lbl, "box": out_box}


def check_labels(labels: Sequence[str] | str | None, *, max_labels: int | None = None, what: str = "labels",
                 default: Sequence[str] | None = DEFAULT_VOCABULARY) -> list[str]:
    """Labels from a list or a comma-separated string (``None`` -> ``default``); bounded by ``max_labels``."""
    if labels is None and default is not None:
        labels = list(default)
    out = parse_labels(labels, what)
    limit = 255 if max_labels is None else min(max_labels, 255)
    if len(out) > limit:
        raise TooManyPrompts(f"too many {what}: {len(out)} > the limit of {limit}")
    return out


def _predict_masks(pred: Predictor, prompts: dict[str, Any], multimask: bool,
                   zoom: bool = False) -> tuple[np.ndarray, np.ndarray]:
    masks, scores, _ = pred.predict(point_coords=prompts["points"], point_labels=prompts["point_labels"],
                                    box=prompts["box"], multimask_output=multimask, zoom=zoom)
    return masks, scores


def task_predict(pred: Predictor, prompts: dict[str, Any], *, multimask: bool = True, zoom: bool = False) -> TaskResult:
    """SAM prompts (validated by :func:`check_prompts`) -> every mask with its predicted IoU; ``best`` is
    the index of the highest score; the label map shows the best mask. ``zoom``: the box decoded on a second
    pass over its neighbourhood (``Predictor.predict(zoom=True)``)."""
    masks, scores = _predict_masks(pred, prompts, multimask, zoom)
    best = int(np.argmax(scores))
    records = [mask_record(m, score=float(s)) for m, s in zip(masks, scores)]
    data = {"masks": records, "scores": [float(s) for s in scores], "best": best, **prompts}
    legend = [legend_entry(1, "mask", records[best]["area"], MASK_COLOUR, score=float(scores[best]))]
    return TaskResult(data, masks[best].astype(np.uint8), legend, prompts)


def task_label(pred: Predictor, prompts: dict[str, Any], labels: Sequence[str], *,
               multimask: bool = True, pooling: str = "auto", tta: bool = False, zoom: bool = False) -> TaskResult:
    """Prompts -> the best mask (highest predicted IoU; ``zoom`` as in :func:`task_predict`) and its label from
    ``labels`` (:meth:`Predictor.label_masks` with ``pooling`` and ``tta``). ``label`` is None for an empty
    mask."""
    masks, scores = _predict_masks(pred, prompts, multimask, zoom)
    best = int(np.argmax(scores))
    idx, probs = pred.label_masks(masks[best][None], list(labels), pooling=pooling, tta=tta)
    i = int(idx[0])
    label = labels[i] if i >= 0 else None
    rec = mask_record(masks[best], score=float(scores[best]))
    data = {
        "mask": rec, "label": label, "label_index": i, "label_score": float(probs[0, i]) if i >= 0 else 0.0,
        "probs": {lab: float(p) for lab, p in zip(labels, probs[0])}, "labels": list(labels), **prompts,
    }
    legend = [legend_entry(1, label or "(empty mask)", rec["area"], MASK_COLOUR, score=data["label_score"])]
    return TaskResult(data, masks[best].astype(np.uint8), legend, prompts)


def task_classify(pred: Predictor, labels: Sequence[str], *, top_k: int = 5, tta: bool | None = None) -> TaskResult:
    """Zero-shot classification: probabilities over ``labels`` (sum 1), ``top`` = the arg-max label; ``tta``:
    see :meth:`Predictor.classify` (None: the model's own setting)."""
    probs = pred.classify(list(labels), tta=tta)
    order = np.argsort(-probs, kind="stable")
    data = {
        "labels": list(labels), "probs": [float(p) for p in probs], "top": labels[int(order[0])],
        "ranking": [{"label": labels[int(i)], "prob": float(probs[i])} for i in order[:top_k]],
    }
    return TaskResult(data)


def task_semseg(pred: Predictor, labels: Sequence[str], *, refine: bool = False,
                crop_margin: float = 0.0) -> TaskResult:
    """Semantic map over ``labels`` + background: label map id ``k`` = ``labels[k - 1]``, 0 = background.
    ``segments`` holds one RLE per class present; ``legend`` lists every requested class. ``crop_margin``:
    see :meth:`Predictor.semantic_segment` (with ``refine``)."""
    res = pred.semantic_segment(list(labels), refine=refine, crop_margin=crop_margin, return_logits=False)
    lm = res.label_map
    counts = np.bincount(lm.ravel(), minlength=len(labels) + 1)
    legend = [legend_entry(k, name, counts[k]) for k, name in enumerate(labels, start=1)]
    segments = [{"id": k, "label": name, **mask_record(lm == k)}
                for k, name in enumerate(labels, start=1) if counts[k]]
    data = {"labels": list(labels), "refined": bool(res.refined), "background_area": int(counts[0]),
            "segments": segments}
    return TaskResult(data, lm.astype(np.uint8), legend)


def task_segment_text(pred: Predictor, phrase: str, *, vocabulary: Sequence[str] | None = None,
                      threshold: float = 0.5, verify: bool = True, candidates: str = "regions") -> TaskResult:
    """Instances of ``phrase`` (the vocabulary acts as distractors), sorted by score; ``verify`` and
    ``candidates``: see :meth:`Predictor.segment_text`."""
    if not isinstance(phrase, str) or not phrase.strip():
        raise PromptError("phrase is empty")
    phrase = " ".join(phrase.split())
    vocab = None if vocabulary is None else [v for v in vocabulary if v != phrase] or None
    inst = pred.segment_text(phrase, vocabulary=vocab, threshold=threshold, verify=verify,
                             candidates=candidates)[:MAX_INSTANCES]
    records = [mask_record(i.mask, score=i.score, predicted_iou=i.predicted_iou, point=list(i.point))
               for i in inst]
    legend = [legend_entry(k, f"{phrase} {k}", r["area"], score=r["score"]) for k, r in enumerate(records, 1)]
    h, w = pred.original_size
    lm = paint_instances([i.mask for i in inst], (h, w))
    return TaskResult({"phrase": phrase, "instances": records}, lm, legend)


def task_everything(pred: Predictor, labels: Sequence[str] | None = None, *, points_per_side: int = 16,
                    pred_iou_thresh: float = 0.7, stability_score_thresh: float = 0.8, min_area: int = 0,
                    max_masks: int = 100, pooling: str = "auto", tta: bool = False,
                    crop_n_layers: int = 0) -> TaskResult:
    """Everything mode: masks from a point grid (+ a label each with ``labels``, by
    :meth:`Predictor.label_masks` with ``pooling`` and ``tta``; ``crop_n_layers`` as in
    :meth:`Predictor.generate`), best first, at most ``max_masks`` (<= 255). ``point`` is the grid point (x, y)
    that produced the mask."""
    records = pred.generate(vocabulary=None if labels is None else list(labels), points_per_side=points_per_side,
                            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                            min_area=min_area, pooling=pooling, tta=tta, crop_n_layers=crop_n_layers,
                            max_masks=min(max_masks, MAX_INSTANCES))
    out, legend = [], []
    for k, r in enumerate(records, start=1):
        extra = {"predicted_iou": r["predicted_iou"], "stability_score": r["stability_score"],
                 "point": r["point_coords"][0]}
        if "label" in r:
            extra |= {"label": r["label"], "label_score": r["label_score"]}
        rec = mask_record(r["segmentation"], **extra)
        out.append(rec)
        legend.append(legend_entry(k, r.get("label", f"mask {k}"), rec["area"], score=r["predicted_iou"]))
    h, w = pred.original_size
    lm = paint_instances([r["segmentation"] for r in records], (h, w))
    return TaskResult({"masks": out, "count": len(out), "labels": None if labels is None else list(labels)},
                      lm, legend)

