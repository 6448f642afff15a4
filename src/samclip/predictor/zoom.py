"""``Predictor.predict(..., zoom=True)``: a box prompt decoded on a second backbone pass over the box's
neighbourhood (:mod:`samclip.inference.zoom`), its masks mapped back to the current image; clicks alone are
zoomed around the ordinary pass's best mask for them (:func:`click_box`)."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch

from ..inference.zoom import ZOOM_CONTEXT, paste_window, to_low_res, zoom_window
from ..prompts import masks_to_boxes

if TYPE_CHECKING:
    from .base import PredictorBase
    from .state import ImageState


#: zoom windows' passes kept per image (the latest ones), so that reads of the same mask reuse them; each holds a
#: backbone pass (SAM ViT-B on a 1024 px frame: ~30 MB in fp32, twice that with its mirrored pass), hence few
WINDOWS_KEPT = 4


def window_state(pred: PredictorBase, window: tuple[int, int, int, int]) -> ImageState:
    """The backbone pass over ``window`` (XYXY, x1 / y1 exclusive, original pixels) of the current image at its
    frame, cached with the image (the :data:`WINDOWS_KEPT` latest windows)."""
    state = pred.state
    kept: OrderedDict[tuple[int, int, int, int], ImageState] = state.tasks.setdefault(("zoom_windows",), OrderedDict())
    if window in kept:
        kept.move_to_end(window)
    else:
        x0, y0, x1, y1 = window
        kept[window] = pred._encode([state.image[y0:y1, x0:x1]], state.frame, batch_size=1)[0]
        while len(kept) > WINDOWS_KEPT:
            kept.popitem(last=False)
    return kept[window]


def predict_zoomed(pred: PredictorBase, coords: torch.Tensor | None, labels: torch.Tensor | None, box: torch.Tensor,
                   multimask_output: bool, context: float = ZOOM_CONTEXT,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """One prompt set with a box, decoded on the box's zoom window; None where the window would not magnify.

    Args:
        pred: the predictor; its current image is the one prompted.
        coords: 1xNx2 points (x, y) in original-image pixels, with labels 1xN, or None; points outside the window
            become padding (label -1): the box has already placed the object inside it.
        box: 1x4 XYXY, original-image pixels.
    Returns:
        (mask logits 1xCxHxW at the original size, predicted IoU 1xC, low-res logits 1xCx4Gx4G in the current
        image's own frame, usable as a later ``mask_input``).
    """
    state = pred.state
    window = zoom_window(tuple(box[0].tolist()), state.original_size, context)
    if window is None:
        return None
    x0, y0, x1, y1 = window
    crop = window_state(pred, window)
    offset = torch.tensor([x0, y0], dtype=torch.float32)
    if coords is not None:
        coords = coords - offset
        inside = (coords >= 0).all(-1) & (coords[..., 0] <= x1 - x0) & (coords[..., 1] <= y1 - y0)
        labels = torch.where(inside, labels, torch.full_like(labels, -1))
    prompts = pred._prompt_tensors(crop, coords, labels, box - offset.repeat(2), None)
    low, iou = pred._decode(crop, *prompts, multimask_output)
    window_logits = pred.model.postprocess_masks(low, crop.input_size, crop.original_size)
    logits = paste_window(window_logits, window, state.original_size)
    return logits, iou, to_low_res(logits, state.input_size, state.frame, 4 * state.grid)


def click_box(pred: PredictorBase, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """1xNx2 points (original pixels) with labels 1xN -> the 1x4 XYXY box (inclusive pixels) of the ordinary
    pass's best mask for them (multimask, highest predicted IoU), or None where that mask is empty."""
    masks, iou, _ = pred.predict_torch(coords, labels, None, None, True, False)
    best = masks[0, int(iou[0].argmax())]
    if not bool(best.any()):
        return None
    return masks_to_boxes(best[None].cpu()).float()
