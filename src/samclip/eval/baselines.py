"""Baselines measured beside the merged model, built from the two teachers.

- MaskCLIP-style dense CLIP (baseline a): the CLIP teacher's last block is read as value
  embeddings (no query-key mixing), then ``ln_post`` and the projection give a CLIP-space vector per
  patch, matched to class text embeddings. For a ResNet tower, the attention pool's value and output
  projections are applied to every cell of the final feature map (MaskCLIP's ResNet variant).
- Crop classification (OV-SAM's crop baseline; with SAM everything-mode it is SAM-CLIP's "SAM+CLIP"
  row, baseline b): each mask's bounding box is cropped, pixels outside the mask greyed, the crop
  resized to the CLIP teacher's input and classified.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import model_device
from ..inference.crops import CROP_PAD, mask_crops
from ..models import CLIP


def _clip_input(clip: CLIP, images: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(model_device(clip)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return clip.normalize_images(x)


@torch.no_grad()
def maskclip_patch_embeddings(clip: CLIP, image: np.ndarray, size: int | None = None) -> torch.Tensor:
    """HxWx3 uint8 -> GxGxE normalised per-patch CLIP embeddings (MaskCLIP's value-embedding trick), on the
    CLIP model's device.

    ``size`` defaults to a ViT's native size; a ResNet (stride 32) runs at the image's shorter side
    rounded down to 32 (at least its native size), as MaskCLIP does.
    """
    v = clip.visual
    if size is None:
        size = v.config.image_size
        if v.config.is_resnet:
            size = max(size, min(image.shape[:2]) // 32 * 32)
    x = _clip_input(clip, image[None], size)
    if v.config.is_resnet:
        fmap = v.feature_map(x)[0]  # CxGhxGw
        emb = v.attnpool.c_proj(v.attnpool.v_proj(fmap.flatten(1).T))
        return F.normalize(emb, dim=-1).reshape(fmap.shape[1], fmap.shape[2], -1)
    x = v.conv1(x)
    g = x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    cls = v.class_embedding.expand(1, 1, -1)
    x = torch.cat([cls, x], dim=1) + v._positions((g, g))
    x = v.ln_pre(x)
    for blk in v.transformer.resblocks[:-1]:
        x = blk(x)
    last = v.transformer.resblocks[-1]
    d = x.shape[-1]
    w, b = last.attn.in_proj_weight, last.attn.in_proj_bias
    value = F.linear(last.ln_1(x), w[2 * d :], b[2 * d :])
    y = last.attn.out_proj(value)[:, 1:]
    emb = v.ln_post(y) @ v.proj
    return F.normalize(emb[0], dim=-1).reshape(g, g, -1)


@torch.no_grad()
def crop_embeddings(clip: CLIP, image: np.ndarray, masks: np.ndarray, pad: float = CROP_PAD,
                    batch: int = 64) -> torch.Tensor:
    """HxWx3 uint8 image and NxHxW bool masks -> NxE normalised CLIP embeddings of the mask crops (on the CPU,
    wherever the model runs)."""
    size = clip.config.vision.image_size
    arr = mask_crops(image, np.asarray(masks, bool), size, pad)
    out = []
    for i in range(0, len(arr), batch):
        out.append(clip.encode_image(_clip_input(clip, arr[i : i + batch], size), normalize=True))
    return torch.cat(out).cpu() if out else torch.zeros(0, clip.config.embed_dim)
