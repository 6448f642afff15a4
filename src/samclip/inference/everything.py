"""Everything-mode helpers (segment-anything's automatic mask generator): point grid, stability score,
box conversion and greedy box NMS. Boxes are XYXY with inclusive pixel indices of the extreme mask
pixels (as ``samclip.prompts.masks_to_boxes`` and SAM's ``batched_mask_to_box``)."""

from __future__ import annotations

import numpy as np
import torch

#: the everything mode's grid at most per side (256 x 256 = 65536 prompts per image); the CLI and the Predictor check it
MAX_POINTS_PER_SIDE = 256


def build_point_grid(points_per_side: int) -> np.ndarray:
    """SAM's regular grid: (n*n)x2 (x, y) in [0, 1], cell centres ``(i + 0.5) / n``."""
    if points_per_side < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    offset = 1 / (2 * points_per_side)
    side = np.linspace(offset, 1 - offset, points_per_side)
    xs = np.tile(side[None, :], (points_per_side, 1))
    ys = np.tile(side[:, None], (1, points_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """SAM's stability score: IoU of the masks ``logits > threshold + offset`` and ``> threshold - offset``.

    ``logits``: Nx...; returns N. The high-threshold mask is a subset of the low one, so the IoU is the
    ratio of their areas; an empty low-threshold mask scores 0.
    """
    flat = logits.flatten(1)
    # counted as uint8 into int32 (exact below 2^31 pixels): about twice as fast as summing bools into int64
    inter = (flat > threshold + offset).view(torch.uint8).sum(-1, dtype=torch.int32)
    union = (flat > threshold - offset).view(torch.uint8).sum(-1, dtype=torch.int32)
    return torch.where(union > 0, inter.double() / union.clamp(min=1).double(), 0.0).float()


def box_xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """Nx4 XYXY -> Nx4 XYWH with ``w = x1 - x0`` (segment-anything's convention for ``bbox``)."""
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of Nx4 and Mx4 XYXY boxes -> NxM (areas ``(x1 - x0) * (y1 - y0)``; 0 when both are empty)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-9), torch.zeros_like(inter))


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices of kept boxes, highest score first. A box is dropped when its IoU with an
    already kept box is above ``iou_threshold``."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores.float(), descending=True, stable=True)
    iou = box_iou(boxes[order].float(), boxes[order].float()).cpu().numpy() > iou_threshold
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of NxHxW and MxHxW bool masks -> NxM (0 where both are empty)."""
    fa, fb = a.flatten(1).float(), b.flatten(1).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
