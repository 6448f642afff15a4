"""Serving: the per-image task layer shared by the HTTP service and the ``samclip`` task commands.

This module needs no web framework (the CLI commands use it without FastAPI installed); the HTTP
app lives in :mod:`samclip.serve.app` (``create_app`` is importable from here too, lazily).

Conventions (every input and output, CLI and HTTP):

- Coordinates are (x, y) pixels of the ORIGINAL image, X first, ``0 <= x <= W`` and ``0 <= y <= H``
  (a pixel index ``x`` refers to the pixel whose left edge is at ``x``; the edges ``W`` / ``H`` are
  allowed so that an exclusive XYXY box can cover the whole image). Prompts outside that range are
  REJECTED (:class:`PromptError`, HTTP 422) rather than silently clipped.
- Prompt boxes are XYXY ``[x0, y0, x1, y1]`` with ``x0 <= x1`` and ``y0 <= y1``.
- Output boxes (``box``) are XYXY pixel edges: ``x1`` / ``y1`` are exclusive (last mask column / row
  + 1), so ``[0, 0, W, H]`` is the whole image and an output box can be fed back as a box prompt.
- Masks are COCO run-length encodings ``{"size": [H, W], "counts": str}`` (pycocotools' compressed
  column-major RLE); decode with ``pycocotools.mask.decode(rle)`` or :func:`rle_decode`.
- Label maps (``label_map_png``) are palette PNGs at the original size: index 0 = nothing
  (transparent), index ``k`` = the legend entry with ``id == k``; the palette colours are the legend
  colours, so the PNG can be drawn directly over the image.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.grid import PALETTE
from ..data.shapes import SHAPES

if TYPE_CHECKING:  # pragma: no cover
    from ..predictor import Predictor

#: the default vocabulary (the scene world's 12 shape names, in category-id order)
DEFAULT_VOCABULARY: tuple[str, ...] = tuple(SHAPES)
#: default decompression-bomb guard: images with more pixels are refused before decoding
DEFAULT_MAX_PIXELS = 40_000_000
#: colour of a single prompted mask (``predict`` / ``label``)
MASK_COLOUR: tuple[int, int, int] = (30, 144, 255)
#: masks returned by everything mode at most (palette PNGs hold 255 ids)
MAX_INSTANCES = 255


# ------------------------------------------------------------------------------------------ errors
class ImageDecodeError(ValueError):
    """The bytes are not a readable image (unknown format, truncated or corrupt): HTTP 400."""


class ImageTooLarge(ValueError):
    """The image header declares more pixels than allowed (decompression-bomb guard): HTTP 413."""


class PromptError(ValueError):
    """A prompt is malformed or outside the image: HTTP 422."""


class TooManyPrompts(PromptError):
    """More prompts (points + box, or text labels) than the configured maximum: HTTP 422."""


# ------------------------------------------------------------------------------------------- images
def _open(source: bytes | str | Path, max_pixels: int) -> Any:
    from PIL import Image

    name = "the upload" if isinstance(source, bytes | bytearray) else str(source)
    if isinstance(source, bytes | bytearray) and not source:
        raise ImageDecodeError("the upload is empty (0 bytes)")
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with warnings.catch_warnings():  # we enforce our own limit below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"{name}: image too large ({err})") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not an image (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"{name}: not a readable image ({err})") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise ImageDecodeError(f"{name}: the image is empty ({w}x{h})")
    if w * h > max_pixels:
        im.close()
        raise ImageTooLarge(f"{name}: image too large: {w}x{h} = {w * h} pixels > the limit of {max_pixels}")
    return im


def probe_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header only (no decoding); ImageDecodeError / ImageTooLarge otherwise.

    The size is the stored one; :func:`read_image` applies the EXIF orientation, which may swap it
    (``probe_image`` does too when the header carries an orientation tag)."""
    im = _open(path, max_pixels)
    try:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block is not fatal here
        orientation = 1
    finally:
        im.close()
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def read_image(source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file or bytes -> HxWx3 uint8 RGB, EXIF orientation applied (as browsers show it).

    The pixel count is checked from the header BEFORE decoding (:class:`ImageTooLarge`); unreadable,
    truncated or corrupt data raises :class:`ImageDecodeError`. 16-bit images keep their high byte;
    alpha is dropped; animations give their first frame.
    """
    from PIL import Image, ImageOps

    from ..inference.image_input import to_rgb_uint8

    im = _open(source, max_pixels)
    name = "the upload" if isinstance(source, bytes | bytearray) else str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16"):
                return to_rgb_uint8(np.asarray(im))
            return to_rgb_uint8(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({err})") from None


# ------------------------------------------------------------------------------------------- labels
def parse_labels(text: str | Sequence[str] | None, what: str = "labels") -> list[str]:
    """``"a, b,c"`` (or a list) -> ``["a", "b", "c"]``; whitespace stripped, empty entries dropped,
    duplicates dropped (first kept). PromptError when nothing is left."""
    items = text.split(",") if isinstance(text, str) else list(text or [])
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise PromptError(f"every entry of {what} must be a string, got {item!r}")
        s = " ".join(item.split())
        if s and s not in out:
            out.append(s)
    if not out:
        raise PromptError(f"{what} is empty; give at least one comma-separated class name")
    return out


# -------------------------------------------------------------------------------------------- masks
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


# ------------------------------------------------------------------------------------------ colours
def class_colour(k: int) -> tuple[int, int, int]:
    """Colour of legend id ``k >= 1`` (cycles through :data:`samclip.data.grid.PALETTE`)."""
    return PALETTE[(k - 1) % len(PALETTE)]


def hex_colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def label_map_png(label_map: np.ndarray, colours: Sequence[Sequence[int]]) -> bytes:
    """HxW ids (0..255) -> palette PNG bytes; index 0 transparent, index k coloured ``colours[k - 1]``."""
    from PIL import Image

    lm = np.asarray(label_map)
    if lm.size and (lm.min() < 0 or lm.max() > 255):
        raise ValueError("label map ids must be in 0..255")
    im = Image.fromarray(lm.astype(np.uint8), mode="P")
    pal = [0, 0, 0]
    for c in colours[:255]:
        pal += [int(v) for v in c]
    im.putpalette(pal + [0, 0, 0] * (256 - len(pal) // 3))
    buf = io.BytesIO()
    im.save(buf, format="PNG", transparency=0, compress_level=3)
    return buf.getvalue()


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ results
@dataclass(eq=False)
class TaskResult:
    """One task's output: ``data`` (JSON-able), an optional HxW uint8 ``label_map`` (0 = nothing,
    ``k`` = ``legend`` entry with ``id == k``) and the ``legend`` (``id``, ``name``, ``color`` hex,
    ``area`` pixels). ``prompts`` echoes the validated prompts for drawing."""

    data: dict[str, Any]
    label_map: np.ndarray | None = None
    legend: list[dict[str, Any]] = field(default_factory=list)
    prompts: dict[str, Any] = field(default_factory=dict)

    def label_map_png(self) -> bytes | None:
        if self.label_map is None:
            return None
        colours = [_hex_to_rgb(e["color"]) for e in sorted(self.legend, key=lambda e: e["id"]) if e["id"] > 0]
        return label_map_png(self.label_map, colours)


def _hex_to_rgb(h: str) -> tuple[int, int, int]:
    return int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)


def _legend_entry(k: int, name: str, area: int, colour: Sequence[int] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": k, "name": name, "color": hex_colour(colour or class_colour(k)), "area": int(area), **extra}


def _paint_instances(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Instance id map (1-based in the given order); larger masks first so smaller ones stay visible."""
    out = np.zeros(shape, dtype=np.uint8)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for i in order[:MAX_INSTANCES]:
        out[masks[i]] = i + 1
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


# -------------------------------------------------------------------------------------------- tasks
def _predict_masks(pred: Predictor, prompts: dict[str, Any], multimask: bool) -> tuple[np.ndarray, np.ndarray]:
    masks, scores, _ = pred.predict(point_coords=prompts["points"], point_labels=prompts["point_labels"],
                                    box=prompts["box"], multimask_output=multimask)
    return masks, scores


def task_predict(pred: Predictor, prompts: dict[str, Any], *, multimask: bool = True) -> TaskResult:
    """SAM prompts (validated by :func:`check_prompts`) -> every mask with its predicted IoU; ``best`` is
    the index of the highest score; the label map shows the best mask."""
    masks, scores = _predict_masks(pred, prompts, multimask)
    best = int(np.argmax(scores))
    records = [mask_record(m, score=float(s)) for m, s in zip(masks, scores)]
    data = {"masks": records, "scores": [float(s) for s in scores], "best": best, **prompts}
    legend = [_legend_entry(1, "mask", records[best]["area"], MASK_COLOUR, score=float(scores[best]))]
    return TaskResult(data, masks[best].astype(np.uint8), legend, prompts)


def task_label(pred: Predictor, prompts: dict[str, Any], labels: Sequence[str], *,
               multimask: bool = True, pooling: str = "auto") -> TaskResult:
    """Prompts -> the best mask (highest predicted IoU) and its label from ``labels``
    (:meth:`Predictor.label_masks` with ``pooling``). ``label`` is None for an empty mask."""
    masks, scores = _predict_masks(pred, prompts, multimask)
    best = int(np.argmax(scores))
    idx, probs = pred.label_masks(masks[best][None], list(labels), pooling=pooling)
    i = int(idx[0])
    label = labels[i] if i >= 0 else None
    rec = mask_record(masks[best], score=float(scores[best]))
    data = {
        "mask": rec, "label": label, "label_index": i, "label_score": float(probs[0, i]) if i >= 0 else 0.0,
        "probs": {lab: float(p) for lab, p in zip(labels, probs[0])}, "labels": list(labels), **prompts,
    }
    legend = [_legend_entry(1, label or "(empty mask)", rec["area"], MASK_COLOUR, score=data["label_score"])]
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
    res = pred.semantic_segment(list(labels), refine=refine, crop_margin=crop_margin)
    lm = res.label_map
    counts = np.bincount(lm.ravel(), minlength=len(labels) + 1)
    legend = [_legend_entry(k, name, counts[k]) for k, name in enumerate(labels, start=1)]
    segments = [{"id": k, "label": name, **mask_record(lm == k)}
                for k, name in enumerate(labels, start=1) if counts[k]]
    data = {"labels": list(labels), "refined": bool(res.refined), "background_area": int(counts[0]),
            "segments": segments}
    return TaskResult(data, lm.astype(np.uint8), legend)


def task_segment_text(pred: Predictor, phrase: str, *, vocabulary: Sequence[str] | None = None,
                      threshold: float = 0.5, verify: bool = True) -> TaskResult:
    """Instances of ``phrase`` (the vocabulary acts as distractors), sorted by score; ``verify``: see
    :meth:`Predictor.segment_text`."""
    if not isinstance(phrase, str) or not phrase.strip():
        raise PromptError("phrase is empty")
    phrase = " ".join(phrase.split())
    vocab = None if vocabulary is None else [v for v in vocabulary if v != phrase] or None
    inst = pred.segment_text(phrase, vocabulary=vocab, threshold=threshold, verify=verify)[:MAX_INSTANCES]
    records = [mask_record(i.mask, score=i.score, predicted_iou=i.predicted_iou, point=list(i.point))
               for i in inst]
    legend = [_legend_entry(k, f"{phrase} {k}", r["area"], score=r["score"]) for k, r in enumerate(records, 1)]
    h, w = pred.original_size
    lm = _paint_instances([i.mask for i in inst], (h, w))
    return TaskResult({"phrase": phrase, "instances": records}, lm, legend)


def task_everything(pred: Predictor, labels: Sequence[str] | None = None, *, points_per_side: int = 16,
                    pred_iou_thresh: float = 0.7, stability_score_thresh: float = 0.8, min_area: int = 0,
                    max_masks: int = 100, pooling: str = "auto") -> TaskResult:
    """Everything mode: masks from a point grid (+ a label each with ``labels``, by
    :meth:`Predictor.label_masks` with ``pooling``), best first, at most ``max_masks`` (<= 255). ``point`` is
    the grid point (x, y) that produced the mask."""
    records = pred.generate(vocabulary=None if labels is None else list(labels), points_per_side=points_per_side,
                            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                            min_area=min_area, pooling=pooling)[: min(max_masks, MAX_INSTANCES)]
    out, legend = [], []
    for k, r in enumerate(records, start=1):
        extra = {"predicted_iou": r["predicted_iou"], "stability_score": r["stability_score"],
                 "point": r["point_coords"][0]}
        if "label" in r:
            extra |= {"label": r["label"], "label_score": r["label_score"]}
        rec = mask_record(r["segmentation"], **extra)
        out.append(rec)
        legend.append(_legend_entry(k, r.get("label", f"mask {k}"), rec["area"], score=r["predicted_iou"]))
    h, w = pred.original_size
    lm = _paint_instances([r["segmentation"] for r in records], (h, w))
    return TaskResult({"masks": out, "count": len(out), "labels": None if labels is None else list(labels)},
                      lm, legend)


# ---------------------------------------------------------------------------------------- rendering
def render_overlay(image: np.ndarray, result: TaskResult, *, alpha: float = 0.55, title: str | None = None) -> bytes:
    """PNG bytes: ``image`` with the result's label map blended in (contours drawn), the prompts
    (green = foreground point, red = background point, yellow = box) and a text legend / title."""
    from PIL import Image, ImageDraw, ImageFont

    out = image.astype(np.float32)
    lm = result.label_map
    by_id = {e["id"]: e for e in result.legend}
    if lm is not None:
        for k in np.unique(lm):
            if k == 0 or int(k) not in by_id:
                continue
            m = lm == k
            c = np.array(_hex_to_rgb(by_id[int(k)]["color"]), dtype=np.float32)
            out[m] = out[m] * (1 - alpha) + c * alpha
            inner = m.copy()
            inner[1:] &= m[:-1]
            inner[:-1] &= m[1:]
            inner[:, 1:] &= m[:, :-1]
            inner[:, :-1] &= m[:, 1:]
            out[m & ~inner] = c
    im = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    r = max(2, round(max(im.size) / 100))
    for (x, y), lab in zip(result.prompts.get("points") or [], result.prompts.get("point_labels") or []):
        colour = (0, 220, 0) if lab == 1 else (230, 0, 0)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=(255, 255, 255))
    if result.prompts.get("box"):
        draw.rectangle(result.prompts["box"], outline=(255, 230, 0), width=max(1, r // 2))
    font = ImageFont.load_default()
    lines = [title] if title else []
    lines += [f"{e['name']} ({e['area']} px)" for e in result.legend if e["area"] > 0][:12]
    y = 2
    for line in lines:
        bb = draw.textbbox((4, y), line, font=font)
        draw.rectangle((bb[0] - 2, bb[1] - 1, bb[2] + 2, bb[3] + 1), fill=(0, 0, 0))
        draw.text((4, y), line, fill=(255, 255, 255), font=font)
        y = bb[3] + 3
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def __getattr__(name: str) -> Any:  # lazy: FastAPI is only needed for the HTTP service
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MAX_PIXELS", "DEFAULT_VOCABULARY", "ImageDecodeError", "ImageTooLarge", "PromptError", "TaskResult",
    "TooManyPrompts", "check_labels", "check_prompts", "create_app", "label_map_png", "mask_record", "parse_labels",
    "png_data_url", "probe_image", "read_image", "render_overlay", "rle_decode", "rle_encode", "task_classify",
    "task_everything", "task_label", "task_predict", "task_segment_text", "task_semseg",
]
