"""Region distillation: an optional extra term of stage I, NOT part of the SAM-CLIP paper (off unless
``region_weight`` > 0).

SAM-CLIP distils only whole-image embeddings into the CLIP head, through a spatial max-pool; nothing
asks a part of the token grid to mean what is in it, and the one-pass mask labelling (OV-SAM's click ->
label) reads exactly such parts. This term adds that, label-free, from D_SAM's class-agnostic masks (the
scene world's instances; SA-1B's masks at real scale): for every mask, the CLIP head's max-pool limited to
the mask's tokens (:meth:`ClipHead.masked_pooled`) is pulled towards the CLIP teacher's embedding of the
mask's crop (grey outside the mask, :func:`samclip.inference.mask_crops`), as in CLIPSelf-style
region-to-crop distillation. ``Predictor.label_masks(pooling="max")`` reads the same pooling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..inference import CROP_PAD, covered_tokens, mask_crops
from ..losses import cosine_distillation_loss
from .streams import SamStream, instance_masks
from .teachers import Teachers


@dataclass
class RegionSet:
    """The regions of a D_SAM stream: ``image_ids`` R (stream index of each region's image), ``select``
    size -> RxGxG bool (the tokens each region covers at that student size), ``targets`` RxE (teacher crop
    embeddings, normalised) and ``by_image`` (per stream image, its region indices)."""

    image_ids: np.ndarray
    select: dict[int, torch.Tensor]
    targets: torch.Tensor
    by_image: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.image_ids)


def token_cover(masks: torch.Tensor, grid: int, min_cover: float, context: int = 0) -> torch.Tensor:
    """NxSxS bool masks (square frame) -> NxGxG bool: tokens whose patch the mask covers at least
    ``min_cover`` of, or the most covered token when none does, grown by ``context`` rings of neighbours."""
    return covered_tokens(F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0], min_cover, context)


@torch.no_grad()
def build_regions(stream: SamStream, teachers: Teachers, sizes: list[int], patch: int, min_cover: float,
                  context: int = 0, min_pixels: int = 30, batch: int = 256, crop_pad: float = CROP_PAD) -> RegionSet:
    """Every instance of at least ``min_pixels`` pixels of every stream image, with its token selection at
    each student size and the teacher's embedding of its crop (``crop_pad``: :func:`mask_crops`'s ``pad``;
    computed once)."""
    image_ids, by_image, crops = [], [], []
    select: dict[int, list[torch.Tensor]] = {s: [] for s in sizes}
    for i in range(len(stream)):
        keep = instance_masks(stream.instance_map(i), min_pixels)
        by_image.append(np.arange(len(image_ids), len(image_ids) + len(keep)))
        image_ids += [i] * len(keep)
        if not keep:
            continue
        masks = np.stack(keep)
        for s in sizes:
            select[s].append(token_cover(torch.from_numpy(masks), s // patch, min_cover, context))
        crops.append(mask_crops(stream.images(np.array([i]))[0], masks, teachers.clip_image_size, crop_pad))
    if not image_ids:
        raise ValueError("region distillation: D_SAM has no instance masks of at least "
                         f"{min_pixels} pixels")
    crops_arr = np.concatenate(crops)
    targets = torch.cat([teachers.clip_image_embeddings(crops_arr[j : j + batch])
                         for j in range(0, len(crops_arr), batch)])
    return RegionSet(np.asarray(image_ids), {s: torch.cat(v) for s, v in select.items()}, targets, by_image)


def region_distillation_loss(head, tokens: torch.Tensor, select: torch.Tensor,  # noqa: ANN001
                             owner: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos) between masked-max-pooled head embeddings and the teacher's crop embeddings.

    Args:
        head: the CLIP head; tokens: BxGxGxD backbone tokens of B images; select: RxGxG bool;
        owner: R long (which of the B images each region is in); targets: RxE normalised.
    """
    return cosine_distillation_loss(head.masked_pooled(head.tokens(tokens)[owner], select), targets)
