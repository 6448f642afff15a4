"""Geometric prompt sampling for training and evaluation (SAM-style).

Masks are boolean NxHxW in the input frame; coordinates are (x, y) pixels of that frame (integer
pixel indices; the prompt encoder adds 0.5 for the pixel centre); boxes are Nx4 XYXY.
"""

from __future__ import annotations

import torch


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """NxHxW bool -> Nx4 XYXY (inclusive pixel indices of the extreme mask pixels; zeros if empty)."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4)
    u = masks.to(torch.bool).view(torch.uint8)  # uint8 max-reductions run ~50x faster than bool any() on CPU
    rows, cols = u.amax(2).bool(), u.amax(1).bool()
    ys = torch.arange(h, device=masks.device).expand(n, h)
    xs = torch.arange(w, device=masks.device).expand(n, w)
    big = torch.iinfo(torch.long).max
    x0 = torch.where(cols, xs, big).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1)
    y0 = torch.where(rows, ys, big).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    return torch.where(rows.any(1)[:, None], boxes, torch.zeros_like(boxes))


def jitter_boxes(boxes: torch.Tensor, generator: torch.Generator | None, frac: float = 0.1,
                 max_px: float = 20.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """SAM's box noise: each coordinate moves by N(0, frac * side), clipped to ``max_px``."""
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).repeat(1, 2)
    noise = torch.randn(boxes.shape, generator=generator) * frac * side
    out = boxes + noise.clamp(-max_px, max_px)
    out = torch.stack([torch.minimum(out[:, 0], out[:, 2]), torch.minimum(out[:, 1], out[:, 3]),
                       torch.maximum(out[:, 0], out[:, 2]), torch.maximum(out[:, 1], out[:, 3])], 1)
    if size is not None:
        h, w = size
        out = torch.stack([out[:, 0].clamp(0, w - 1), out[:, 1].clamp(0, h - 1),
                           out[:, 2].clamp(0, w - 1), out[:, 3].clamp(0, h - 1)], 1)
    return out


def sample_points(region: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One uniformly random pixel of each NxHxW region -> (Nx2 (x, y) float, N bool "region non-empty")."""
    n, h, w = region.shape
    scores = torch.rand(region.shape, generator=generator) * region
    flat = scores.flatten(1).argmax(1)
    pts = torch.stack([flat % w, flat // w], 1).float()
    return pts, region.flatten(1).any(1)


def interior_points(masks: torch.Tensor, generator: torch.Generator | None, margin: int = 2) -> torch.Tensor:
    """A random pixel of each mask at least ``margin`` pixels from its border (any pixel if none)."""
    inner = masks.float()[:, None]
    if margin > 0:
        k = 2 * margin + 1
        inner = -torch.nn.functional.max_pool2d(-inner, k, stride=1, padding=margin)
    inner = inner[:, 0] > 0.5
    inner = torch.where(inner.flatten(1).any(1)[:, None, None], inner, masks)
    return sample_points(inner, generator)[0]


def corrective_points(pred: torch.Tensor, target: torch.Tensor,
                      generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's corrective click: a point in the error region of each prediction.

    Args:
        pred, target: NxHxW bool.
    Returns:
        points Nx2 and labels N (1 where the point is a missed foreground pixel, 0 for a false
        positive; -1 (padding) where the prediction is already perfect).
    """
    error = pred ^ target
    pts, any_err = sample_points(error, generator)
    x, y = pts[:, 0].long(), pts[:, 1].long()
    in_target = target[torch.arange(target.shape[0]), y, x]
    labels = torch.where(any_err, in_target.long(), torch.full_like(in_target, -1, dtype=torch.long))
    return pts, labels
