"""Everything-mode helpers (segment-anything's automatic mask generator): point grid, crop layers, stability
score, box conversion and greedy box NMS. Boxes are XYXY with inclusive pixel indices of the extreme mask
pixels (as ``samclip.prompts.masks_to_boxes`` and SAM's ``batched_mask_to_box``)."""

from __future__ import annotations

import math

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


#: crop layers at most (layer 4 alone is 256 crops, a backbone pass each)
MAX_CROP_LAYERS = 4
#: segment-anything's default overlap of neighbouring crops, as a share of the image's shorter side at layer 1
CROP_OVERLAP_RATIO = 512 / 1500
#: a mask whose box lies within this share of the image's longer side of an inner crop edge is cut by the crop:
#: dropped (segment-anything's 20 px on its 1024 px frame)
CROP_EDGE_MARGIN = 20 / 1024


def crop_boxes(image_size: tuple[int, int], n_layers: int,
               overlap_ratio: float = CROP_OVERLAP_RATIO) -> list[tuple[tuple[int, int, int, int], int]]:
    """The everything mode's crops: ``((x0, y0, x1, y1), layer)`` in original-image pixels (x1, y1 exclusive).

    Layer 0 is the whole image; layer ``i >= 1`` tiles it with ``2**i`` x ``2**i`` crops that overlap their
    neighbours by ``overlap_ratio`` x the shorter side x ``2 / 2**i`` pixels (segment-anything's layout); on an
    image of a few pixels, the crops that would be empty or repeat another (of any layer) are left out."""
    h, w = image_size
    out = [((0, 0, w, h), 0)]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * min(h, w) * 2 / n)
        cw, ch = math.ceil((overlap * (n - 1) + w) / n), math.ceil((overlap * (n - 1) + h) / n)
        for y0 in (int((ch - overlap) * j) for j in range(n)):
            for x0 in (int((cw - overlap) * i) for i in range(n)):
                box = (x0, y0, min(x0 + cw, w), min(y0 + ch, h))
                if box[0] < box[2] and box[1] < box[3] and all(box != b for b, _ in out):  # images of a few pixels
                    out.append((box, layer))
    return out


def near_inner_crop_edge(boxes: torch.Tensor, crop: tuple[int, int, int, int], image_size: tuple[int, int],
                         margin: float = CROP_EDGE_MARGIN) -> torch.Tensor:
    """Nx4 XYXY boxes (inclusive, original-image pixels) -> N bool: within ``margin`` x the image's longer side of
    an edge of ``crop`` that is not an edge of the image (the mask may continue outside the crop)."""
    h, w = image_size
    tol = margin * max(h, w)
    x0, y0, x1, y1 = crop
    crop_t = torch.tensor([x0, y0, x1 - 1, y1 - 1], dtype=torch.float32, device=boxes.device)
    image_t = torch.tensor([0, 0, w - 1, h - 1], dtype=torch.float32, device=boxes.device)
    b = boxes.float()
    return ((b - crop_t).abs() <= tol).logical_and((b - image_t).abs() > tol).any(1)


def crop_nms(boxes: torch.Tensor, crop_areas: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Masks found in several crops -> indices of those kept, by ``scores`` descending: greedy box NMS that
    prefers the mask from the smaller crop (``crop_areas`` N, pixels), as segment-anything does across crops."""
    keep = box_nms(boxes, 1 / crop_areas.to(boxes.device, torch.float32), iou_threshold)
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]


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
    already kept box is above ``iou_threshold``. The IoUs are taken a block of rows at a time (at most ~16M
    entries), so memory grows with the number of boxes, not its square (10,000 candidates made a 0.4 GB matrix
    and ten temporaries of that size)."""
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores.float(), descending=True, stable=True)
    ordered = boxes[order].float().cpu()
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    rows = max(1, (1 << 24) // n)
    for start in range(0, n, rows):
        block = (box_iou(ordered[start : start + rows], ordered) > iou_threshold).numpy()
        for r, i in enumerate(range(start, min(start + rows, n))):
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed[i + 1 :] |= block[r, i + 1 :]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of NxHxW and MxHxW bool masks -> NxM (0 where both are empty)."""
    fa, fb = a.flatten(1).float(), b.flatten(1).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
