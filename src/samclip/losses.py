"""Losses: SAM's focal + dice + IoU-prediction losses (hard or soft targets) and CLIP's losses.

All mask losses take logits NxHxW (or NxKxHxW with a K axis handled by the caller) and targets in
[0, 1] of the same shape: a ground-truth mask (0/1) or a teacher's probabilities (soft).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Per-mask focal loss (mean over pixels) -> N. Soft targets are allowed."""
    logits, targets = logits.flatten(1).float(), targets.flatten(1).float()
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.mean(1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-mask soft dice loss -> N."""
    prob = logits.flatten(1).float().sigmoid()
    targets = targets.flatten(1).float()
    inter = (prob * targets).sum(1)
    return 1 - (2 * inter + eps) / (prob.sum(1) + targets.sum(1) + eps)


def mask_iou(pred_logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """IoU of the binarised prediction with the binarised target -> N (no gradient)."""
    with torch.no_grad():
        p = pred_logits.flatten(1) > threshold
        t = targets.flatten(1) > 0.5
        inter = (p & t).sum(1).float()
        union = (p | t).sum(1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def focal_dice(logits: torch.Tensor, targets: torch.Tensor, focal_weight: float = 20.0,
               dice_weight: float = 1.0) -> torch.Tensor:
    """SAM's mask loss, 20:1 focal:dice, per mask -> N."""
    return focal_weight * sigmoid_focal_loss(logits, targets) + dice_weight * dice_loss(logits, targets)


def sam_loss(mask_logits: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor,
             iou_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SAM training loss with multimask outputs.

    Args:
        mask_logits: NxKxHxW, iou_pred: NxK, targets: NxHxW in [0, 1].
    Returns:
        (scalar loss, named parts). Only the output with the lowest mask loss is back-propagated
        (SAM's ambiguity-aware minimum); the IoU head learns every output's actual IoU.
    """
    n, k = mask_logits.shape[:2]
    tgt = targets[:, None].expand(-1, k, -1, -1).reshape(n * k, *targets.shape[-2:])
    flat = mask_logits.reshape(n * k, *mask_logits.shape[-2:])
    per = focal_dice(flat, tgt).view(n, k)
    best = per.argmin(1)
    mask_loss = per.gather(1, best[:, None]).mean()
    actual_iou = mask_iou(flat, tgt).view(n, k)
    iou_loss = F.mse_loss(iou_pred.float(), actual_iou)
    total = mask_loss + iou_weight * iou_loss
    return total, {"mask": mask_loss.detach(), "iou": iou_loss.detach(),
                   "miou": actual_iou.gather(1, best[:, None]).mean()}


def clip_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
                          logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE on L2-normalised BxE embeddings (row i of each is a pair)."""
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def cosine_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """SAM-CLIP's L_CLIP: mean of 1 - cos(student, teacher) over BxE embeddings."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
