"""Region distillation: an optional extra term of stages I / III, NOT part of the SAM-CLIP paper (off unless
``region_weight`` or ``dense_weight`` > 0).

SAM-CLIP distils only whole-image embeddings into the CLIP head, through a spatial max-pool; nothing
asks a part of the token grid to mean what is in it, and the one-pass mask labelling (OV-SAM's click ->
label) and the per-patch semantic map read exactly such parts. These terms add that, label-free, from
D_SAM's class-agnostic masks (the scene world's instances; SA-1B's masks at real scale), in the spirit of
CLIPSelf's region-to-crop distillation:

- region term (``region_weight``): for every mask, the CLIP head's max-pool limited to the mask's tokens
  (:meth:`ClipHead.masked_pooled`) is pulled towards the CLIP teacher's embedding of the mask's crop (grey
  outside the mask, :func:`samclip.inference.mask_crops`). ``Predictor.label_masks(pooling="max")`` reads
  the same pooling.
- background region (``data.region_background``): per image one more region, the tokens that the masks
  together cover at most ``data.region_background_max_cover`` of, whose target is the teacher's embedding of
  the whole image with every mask's pixels grey (what is left when the things are taken out).
- dense term (``dense_weight``): every single token's own read (LayerNorm + MLP, as the per-patch map with
  ``dense_pool = 1`` reads it) is pulled towards the target of the region that owns it: the mask covering
  at least ``min_cover`` of its patch (the most covering one), or the background region; the other tokens
  (object edges) are left free. Background tokens and mask tokens are averaged separately and summed, so
  that the usually larger background does not drown the objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..inference import CROP_PAD, covered_tokens, mask_crops
from ..inference.crops import GREY
from .streams import SamStream, instance_masks
from .teachers import Teachers


@dataclass
class RegionSet:
    """The regions of a D_SAM stream: ``image_ids`` R (stream index of each region's image), ``select``
    size -> RxGxG bool (the tokens each region covers at that student size; for the max-pool), ``targets``
    RxE (teacher crop embeddings, normalised), ``by_image`` (per stream image, its region indices),
    ``background`` R bool (the region is an image's background) and ``owner`` size -> NxGxG long (per stream
    image and token, the index of the region whose target the token's own read is pulled to; -1: none)."""

    image_ids: np.ndarray
    select: dict[int, torch.Tensor]
    targets: torch.Tensor
    by_image: list[np.ndarray]
    background: np.ndarray
    owner: dict[int, torch.Tensor]

    def __len__(self) -> int:
        return len(self.image_ids)


def token_cover(masks: torch.Tensor, grid: int, min_cover: float, context: int = 0) -> torch.Tensor:
    """NxSxS bool masks (square frame) -> NxGxG bool: tokens whose patch the mask covers at least
    ``min_cover`` of, or the most covered token when none does, grown by ``context`` rings of neighbours."""
    return covered_tokens(F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0], min_cover, context)


def token_owners(masks: torch.Tensor, anything: torch.Tensor, grid: int, min_cover: float,
                 background_max_cover: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's masks NxSxS bool and the union of all its labelled pixels SxS bool ->
    (GxG long owner: k for the mask k that covers at least ``min_cover`` of the token's patch (the most
    covering one), N for the background (the union covers at most ``background_max_cover``; None: no
    background), -1 for neither; GxG bool background tokens)."""
    cover_any = F.adaptive_avg_pool2d(anything[None, None].float(), grid)[0, 0]
    background = (cover_any <= background_max_cover) if background_max_cover is not None \
        else torch.zeros(grid, grid, dtype=torch.bool)
    owner = torch.where(background, len(masks), -1)
    if len(masks):
        best, which = F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0].max(0)
        owner = torch.where(best >= min_cover, which, owner)
    return owner.long(), background


@torch.no_grad()
def build_regions(stream: SamStream, teachers: Teachers, sizes: list[int], patch: int, min_cover: float,
                  context: int = 0, min_pixels: int = 30, batch: int = 256, crop_pad: float = CROP_PAD,
                  background_max_cover: float | None = None) -> RegionSet:
    """Every instance of at least ``min_pixels`` pixels of every stream image, with its token selection at
    each student size and the teacher's embedding of its crop (``crop_pad``: :func:`mask_crops`'s ``pad``),
    plus, when ``background_max_cover`` is set, each image's background region (at the first size, its
    tokens must not be empty; otherwise the image has none); and every token's owner (computed once)."""
    image_ids: list[int] = []
    by_image, targets, is_bg = [], [], []
    select: dict[int, list[torch.Tensor]] = {s: [] for s in sizes}
    owner: dict[int, list[torch.Tensor]] = {s: [] for s in sizes}
    for i in range(len(stream)):
        inst = stream.instance_map(i)
        keep = instance_masks(inst, min_pixels)
        masks = torch.from_numpy(np.stack(keep)) if keep else torch.zeros((0, *inst.shape), dtype=torch.bool)
        image = stream.images(np.array([i]))[0]
        per_size = {s: token_owners(masks, torch.from_numpy(inst > 0), s // patch, min_cover, background_max_cover)
                    for s in sizes}
        with_bg = background_max_cover is not None and bool(per_size[sizes[0]][1].any())
        n = len(keep) + int(with_bg)
        by_image.append(np.arange(len(image_ids), len(image_ids) + n))
        image_ids += [i] * n
        is_bg += [False] * len(keep) + [True] * int(with_bg)
        # embedded image by image (the teacher's inputs are never all held: full-size images for backgrounds)
        if keep:
            targets.append(_embed(teachers, mask_crops(image, masks.numpy(), teachers.clip_image_size, crop_pad),
                                  batch))
        if with_bg:
            targets.append(_embed(teachers, np.where((inst > 0)[..., None], np.uint8(GREY), image)[None], batch))
        for s in sizes:
            own, bg = per_size[s]
            parts = [token_cover(masks, s // patch, min_cover, context)] if keep else []
            if with_bg:
                parts.append(bg[None])  # may be empty at another size: then never pooled there
            if parts:
                select[s].append(torch.cat(parts))
            if not with_bg:
                own = torch.where(own == len(keep), -1, own)
            owner[s].append(torch.where(own >= 0, own + (int(by_image[-1][0]) if n else 0), -1))
    if not image_ids:
        raise ValueError("region distillation: D_SAM has no instance masks of at least "
                         f"{min_pixels} pixels")
    return RegionSet(np.asarray(image_ids), {s: torch.cat(v) for s, v in select.items()}, torch.cat(targets), by_image,
                     np.asarray(is_bg, dtype=bool), {s: torch.stack(v) for s, v in owner.items()})


def _embed(teachers: Teachers, images: np.ndarray, batch: int) -> torch.Tensor:
    """NxSxSx3 uint8 -> NxE teacher image embeddings (normalised), ``batch`` images per call."""
    return torch.cat([teachers.clip_image_embeddings(images[j : j + batch]) for j in range(0, len(images), batch)])


def region_pooled_loss(head, head_tokens: torch.Tensor, select: torch.Tensor,  # noqa: ANN001
                       owner: torch.Tensor, targets: torch.Tensor, count: float | None = None) -> torch.Tensor:
    """mean(1 - cos) between masked-max-pooled head embeddings and the teacher's crop embeddings.

    Args:
        head: the CLIP head; head_tokens: BxGxGxD head tokens of B images; select: RxGxG bool (a region
        with no token at this size, e.g. a background the masks fill, is skipped); owner: R long (which of
        the B images each region is in); targets: RxE normalised; count: divide the sum by this instead of
        the number of regions here (a distributed step: the regions of the whole batch, times the world
        size, so that the ranks' averaged gradients are one process's).
    """
    keep = select.flatten(1).any(1)
    if not bool(keep.any()):
        return head_tokens.sum() * 0  # keeps the graph
    pooled = head.masked_pooled(head_tokens[owner[keep]], select[keep])
    loss = 1 - F.cosine_similarity(pooled.float(), targets[keep].float(), dim=-1)
    return loss.sum() / (count if count is not None else max(1, len(loss)))


def dense_distillation_loss(head, head_tokens: torch.Tensor, token_owner: torch.Tensor,  # noqa: ANN001
                            targets: torch.Tensor, background: torch.Tensor,
                            counts: tuple[float, float] | None = None) -> torch.Tensor:
    """Per-token distillation: each owned token's own read (LayerNorm + MLP) vs its owner's target.

    Args:
        head: the CLIP head; head_tokens: BxGxGxD; token_owner: BxGxG long (index into ``targets``, -1: none);
        targets: RxE normalised; background: R bool (which targets are background regions); counts:
        (background tokens, mask tokens) to divide the two sums by instead of the counts here (see
        :func:`region_pooled_loss`'s ``count``).
    Returns:
        mean(1 - cos) over background-owned tokens plus the same over mask-owned tokens (a group with no
        token adds 0).
    """
    owned = token_owner >= 0
    idx = token_owner[owned]
    read = head.mlp(head.norm(head_tokens[owned]))
    loss = 1 - F.cosine_similarity(read.float(), targets[idx].float(), dim=-1)
    bg = background[idx]
    total = head_tokens.sum() * 0  # keeps the graph when nothing is owned
    for group, n in zip((bg, ~bg), counts or (None, None)):
        if bool(group.any()):
            total = total + loss[group].sum() / (n if n is not None else int(group.sum()))
    return total


def token_counts(regions: RegionSet, size: int, image_ids: np.ndarray) -> tuple[int, int, int]:
    """(regions with a token at ``size``, background-owned tokens, mask-owned tokens) of ``image_ids``."""
    ridx = torch.as_tensor(np.concatenate([regions.by_image[i] for i in image_ids]), dtype=torch.long)
    n_regions = int(regions.select[size][ridx].flatten(1).any(1).sum())
    owner = regions.owner[size][torch.as_tensor(image_ids)]
    owned = owner[owner >= 0]
    n_bg = int(torch.as_tensor(regions.background)[owned].sum())
    return n_regions, n_bg, len(owned) - n_bg
