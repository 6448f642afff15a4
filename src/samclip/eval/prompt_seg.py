"""Prompt-based instance segmentation metrics: mIoU with ground-truth box and interior-point prompts.

Works for any model exposing SAM's interface (``preprocess``, ``image_embeddings``, ``decode``,
``postprocess_masks``): a SAM teacher or the merged model's SAM head.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.banks import SceneBank
from ..precision import autocast, resolve_bf16
from ..prompts import interior_points, masks_to_boxes


def _iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NxKxHxW bool vs NxHxW bool -> NxK IoU."""
    t = target[:, None]
    inter = (pred & t).flatten(2).sum(-1).float()
    union = (pred | t).flatten(2).sum(-1).float()
    return inter / union.clamp(min=1)


@torch.no_grad()
def prompt_miou(model, bank: SceneBank, *, batch_images: int = 8, bf16: bool | None = None,  # noqa: ANN001
                seed: int = 0, max_images: int | None = None, breakdown: bool = False, zoom: bool = False) -> dict:
    """mIoU over every instance of ``bank`` (images at the model's native size).

    Returns ``box_miou`` (GT box, single-mask output), ``point_miou`` (one interior point, best of
    the multimask outputs, SAM's oracle protocol), ``point_miou_first`` (the output ranked first by
    the predicted IoU) and ``instances``; IoUs in percent. ``zoom`` adds ``box_miou_zoom`` and
    ``point_miou_first_zoom``: the same boxes, and the same points (the mask ranked first), through
    ``Predictor.predict(zoom=True)`` (a second backbone pass over each object's neighbourhood).
    ``breakdown`` adds ``by_category`` (per shape category: ``box_miou``, ``point_miou``, ``instances``, and
    ``box_miou_zoom`` with ``zoom``) and ``by_area`` (the same per bucket of the instance's visible area as a
    share of the image, :data:`AREA_BUCKETS`).
    """
    model.eval()
    dev = next(model.parameters()).device
    bf16 = resolve_bf16(bf16, dev)
    gen = torch.Generator().manual_seed(seed)
    n = len(bank) if max_images is None else min(len(bank), max_images)
    box_ious, point_best, point_ranked, categories, areas, zoom_ious, zoom_points = [], [], [], [], [], [], []
    zoomer = _zoom_predictor(model, bf16) if zoom else None
    for start in range(0, n, batch_images):
        imgs = torch.from_numpy(bank.images[start : start + batch_images]).to(dev).permute(0, 3, 1, 2)
        size = imgs.shape[-2:]
        with autocast(dev, bf16):
            emb = model.image_embeddings(model.preprocess(imgs))
        for j in range(imgs.shape[0]):
            inst = torch.from_numpy(bank.instance_maps[start + j].astype(np.int64))  # prompts drawn on the CPU
            ids = torch.arange(1, int(inst.max()) + 1)
            masks = inst[None] == ids[:, None, None]
            present = masks.flatten(1).any(1)
            masks = masks[present]
            if masks.shape[0] == 0:
                continue
            if breakdown:
                objects = bank.objects[start + j]
                categories += [objects[i][0] for i in torch.nonzero(present)[:, 0].tolist()]
                areas.append(masks.flatten(1).float().mean(1))
            e = emb[j : j + 1]
            with autocast(dev, bf16):
                low_b, _ = model.decode(e, boxes=masks_to_boxes(masks).to(dev), multimask_output=False)
                pts = interior_points(masks, gen)[:, None].to(dev)
                low_p, iou_p = model.decode(e, pts, torch.ones(pts.shape[:2], dtype=torch.long, device=dev))
            up_b = model.postprocess_masks(low_b, tuple(size), tuple(size)) > model.mask_threshold
            up_p = model.postprocess_masks(low_p, tuple(size), tuple(size)) > model.mask_threshold
            masks = masks.to(dev)
            box_ious.append(_iou(up_b, masks)[:, 0])
            if zoomer is not None:
                box_z, point_z = _zoomed_ious(zoomer, bank.images[start + j], masks, pts[:, 0])
                zoom_ious.append(box_z)
                zoom_points.append(point_z)
            ious = _iou(up_p, masks)
            point_best.append(ious.max(1).values)
            point_ranked.append(ious.gather(1, iou_p.float().argmax(1, keepdim=True))[:, 0])
    box, point = torch.cat(box_ious).cpu(), torch.cat(point_best).cpu()
    out: dict = {
        "box_miou": 100 * box.mean().item(),
        "point_miou": 100 * point.mean().item(),
        "point_miou_first": 100 * torch.cat(point_ranked).mean().item(),
        "instances": int(box.numel()),
    }
    zoomed = torch.cat(zoom_ious).cpu() if zoom_ious else None
    if zoomed is not None:
        out["box_miou_zoom"] = 100 * zoomed.mean().item()
        out["point_miou_first_zoom"] = 100 * torch.cat(zoom_points).mean().item()
    if breakdown:
        out["by_category"] = _groups(box, point, categories, zoomed=zoomed)
        area = torch.cat(areas)
        names = [next(name for name, hi in AREA_BUCKETS if a < hi) for a in area.tolist()]
        out["by_area"] = _groups(box, point, names, order=[name for name, _ in AREA_BUCKETS], zoomed=zoomed)
    return out


def _zoom_predictor(model, bf16: bool):  # noqa: ANN001, ANN202
    from ..predictor import Predictor

    return Predictor(model, bf16=bf16)


def _zoomed_ious(pred, image: np.ndarray, masks: torch.Tensor,  # noqa: ANN001
                 points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth masks NxHxW bool, one interior point each Nx2 (pixels) -> IoU N of each with
    ``pred.predict(box=its box, zoom=True)``'s single mask, and IoU N with the mask ranked first of
    ``pred.predict(point_coords=its point, zoom=True)``."""
    pred.set_image(image)
    boxes = masks_to_boxes(masks.cpu()).numpy()
    by_box = [pred.predict(box=b, multimask_output=False, zoom=True)[0][0] for b in boxes]
    by_point = []
    for p in points.cpu().numpy():
        found, scores, _ = pred.predict(point_coords=p[None], point_labels=[1], zoom=True)
        by_point.append(found[int(np.argmax(scores))])
    box_iou = _iou(torch.from_numpy(np.stack(by_box))[:, None].to(masks.device), masks)[:, 0]
    return box_iou, _iou(torch.from_numpy(np.stack(by_point))[:, None].to(masks.device), masks)[:, 0]


# buckets of an instance's visible area as a share of the image: (name, upper bound, exclusive)
AREA_BUCKETS: tuple[tuple[str, float], ...] = (
    ("<1.5%", 0.015), ("1.5-3%", 0.03), ("3-6%", 0.06), ("6-12%", 0.12), (">=12%", float("inf")),
)


def _groups(box: torch.Tensor, point: torch.Tensor, keys: list[str], order: list[str] | None = None,
            zoomed: torch.Tensor | None = None) -> dict:
    """Per key (sorted, or in ``order``; absent keys left out): box / point (and zoomed box) mIoU in percent and
    the count."""
    out = {}
    for key in order or sorted(set(keys)):
        sel = torch.tensor([k == key for k in keys])
        if sel.any():
            out[key] = {"box_miou": 100 * box[sel].mean().item(), "point_miou": 100 * point[sel].mean().item(),
                        "instances": int(sel.sum())}
            if zoomed is not None:
                out[key]["box_miou_zoom"] = 100 * zoomed[sel].mean().item()
    return out
