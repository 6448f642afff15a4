"""Serving: the per-image task layer shared by the HTTP service and the ``samclip`` task commands.

Modules: :mod:`~samclip.serve.images` (decode / encode), :mod:`~samclip.serve.masks` (RLE),
:mod:`~samclip.serve.render` (colours, label maps, overlays), :mod:`~samclip.serve.tasks` (validation and
the task functions), :mod:`~samclip.serve.app` (FastAPI), :mod:`~samclip.serve.cache` (the image cache).

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

from typing import Any

from .images import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLarge, png_data_url, probe_image, read_image
from .masks import mask_record, rle_decode, rle_encode
from .render import TaskResult, label_map_png, render_overlay
from .tasks import (
    DEFAULT_VOCABULARY,
    PromptError,
    TooManyPrompts,
    check_labels,
    check_prompts,
    parse_labels,
    task_classify,
    task_everything,
    task_label,
    task_predict,
    task_segment_text,
    task_semseg,
)


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
