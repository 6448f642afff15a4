"""Zoomed box prompts: the window around a box that a second backbone pass re-encodes at the model's frame, and
the mapping of that window's masks back into the image's own low-resolution frame.

A small object covers few tokens of the backbone's grid (at 256 px with 16 px patches, an object of 2% of the image
covers about 5 of the 16x16 tokens), and its masks lose most where that is so. Re-encoding a square of
:data:`ZOOM_CONTEXT` x the box's longer side around the box gives the object more tokens while keeping the
surroundings SAM reads a boundary against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: the zoom window's side over the box's longer side. The object then fills about a third of the re-encoded
#: frame: on the shipped teacher (val, two sets of 370 and 345 boxes) 2.5 and 3.0 gave the same gains within 0.4
#: point, while at 2.0, where the object fills half of it, the gain was gone (77.4 vs 77.6 without zoom).
ZOOM_CONTEXT = 3.0


#: the window's side is at least the image's longer side over this (a box of a few pixels is not blown up to
#: the frame; no object of the first 300 val or test scenes has a window that small)
ZOOM_MAX_MAGNIFICATION = 8.0


def zoom_window(box: tuple[float, float, float, float], image_size: tuple[int, int],
                context: float = ZOOM_CONTEXT) -> tuple[int, int, int, int] | None:
    """The window a zoomed box prompt re-encodes, or None where zooming would not magnify.

    Args:
        box: XYXY in original-image pixels (clipped into the image first, as prompts are).
        image_size: (H, W) of the original image.
        context: the window's side over the box's longer side (>= 1, so the window holds the box).
    Returns:
        (x0, y0, x1, y1) integer pixels of the original image (x1, y1 exclusive): a square of ``context`` x the
        box's longer side (at least the image's longer side / :data:`ZOOM_MAX_MAGNIFICATION`) centred on the
        box and clipped to the image; None when that square is not smaller than the image's longer side.
    """
    h, w = image_size
    x0, x1 = (min(max(float(v), 0.0), w - 1.0) for v in (box[0], box[2]))
    y0, y1 = (min(max(float(v), 0.0), h - 1.0) for v in (box[1], box[3]))
    side = max(context * max(x1 - x0, y1 - y0), max(h, w) / ZOOM_MAX_MAGNIFICATION)
    if side >= max(h, w):
        return None
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = max(0, math.floor(cx - side / 2)), max(0, math.floor(cy - side / 2))
    right, bottom = min(w, math.ceil(cx + side / 2)), min(h, math.ceil(cy + side / 2))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def paste_window(window_logits: torch.Tensor, window: tuple[int, int, int, int],
                 image_size: tuple[int, int]) -> torch.Tensor:
    """NxCxhxw mask logits of a window -> NxCxHxW logits of the whole image: the window's logits inside it, each
    mask's lowest logit outside (the box, hence the object, lies inside the window)."""
    return _placed(window_logits, window[0], window[1], image_size)


def to_low_res(logits: torch.Tensor, input_size: tuple[int, int], frame: int, low: int) -> torch.Tensor:
    """NxCxHxW logits at the original size -> NxCx(low)x(low) logits of the image's low-resolution frame (the
    resized image at the top left of the padded ``frame`` square), usable as a later ``mask_input``: the inverse of
    ``Sam.postprocess_masks``. The padding takes each mask's lowest logit."""
    resized = F.interpolate(logits.float(), input_size, mode="bilinear", align_corners=False, antialias=True)
    padded = _placed(resized, 0, 0, (frame, frame))
    return F.interpolate(padded, (low, low), mode="bilinear", align_corners=False, antialias=True)


def _placed(logits: torch.Tensor, x0: int, y0: int, size: tuple[int, int]) -> torch.Tensor:
    """...xhxw logits -> ...x(size) logits: them with their top-left corner at (x0, y0), each map's lowest logit
    around them."""
    h, w = logits.shape[-2:]
    out = logits.flatten(-2).amin(-1)[..., None, None].expand(*logits.shape[:-2], *size).clone()
    out[..., y0 : y0 + h, x0 : x0 + w] = logits
    return out
