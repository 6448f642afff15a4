"""A SAM with a finer token grid made from a trained one: the same image size, a smaller patch.

SAM's encoder reads an image in ``patch_size`` x ``patch_size`` patches, so an object a few patches wide is a
few tokens to it. A model with patch ``p / f`` reads each image as the original model would read it
upsampled ``f`` times (nearest neighbour), so it starts from everything the original learned:
- ``patch_embed.proj``: each ``p / f`` kernel cell is the sum of the ``f`` x ``f`` cells of the original kernel
  it covers (for an ``f``-times nearest-upsampled image the two convolutions give the same tokens);
- ``pos_embed``: resized bicubically to the new grid;
- the global blocks' relative-position tables: resampled linearly to the new grid (windowed blocks keep
  theirs: a window is still ``window_size`` tokens, of ``f``-times smaller patches).

The model then needs fine-tuning at the new grid (``python -m samclip.teachers.sam_teacher --init ...
--patch-size ...``): the windows cover less of the image and the tokens are ``f`` x ``f`` as many (about that
much more compute per image).
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F

from ..models import Sam, SamConfig
from ..models.image_encoder import resize_abs_pos, resize_rel_pos


def with_patch_size(config: SamConfig, patch_size: int) -> SamConfig:
    """``config`` with its image encoder's patch size replaced (nothing else changes)."""
    return dataclasses.replace(config, image_encoder=dataclasses.replace(config.image_encoder, patch_size=patch_size))


def finer_patch_sam(sam: Sam, patch_size: int) -> Sam:
    """A new Sam like ``sam`` (any config; its weights are not changed) with the encoder's patch size
    ``patch_size``, which must divide the current one (16 -> 8, 4, ...). Returned in eval mode."""
    enc = sam.config.image_encoder
    if patch_size < 1 or enc.patch_size % patch_size:
        raise ValueError(f"patch_size must divide the model's patch size {enc.patch_size}, got {patch_size}")
    if enc.img_size % patch_size:
        raise ValueError(f"patch_size {patch_size} must divide the image size {enc.img_size}")
    factor = enc.patch_size // patch_size
    out = Sam.from_config(with_patch_size(sam.config, patch_size))
    target = out.state_dict()
    state = {}
    for key, value in sam.state_dict().items():
        shape = target[key].shape
        if key == "image_encoder.patch_embed.proj.weight" and factor > 1:
            value = F.avg_pool2d(value, factor) * factor**2  # DxCxpxp -> DxCx(p/f)x(p/f), cell sums
        elif key == "image_encoder.pos_embed":
            value = resize_abs_pos(value, tuple(shape[1:3]))
        elif "rel_pos" in key and value.shape != shape:
            value = resize_rel_pos(value, shape[0])
        if value.shape != shape:  # every other tensor is independent of the patch size
            raise ValueError(f"{key}: cannot map {tuple(value.shape)} to {tuple(shape)}")
        state[key] = value
    out.load_state_dict(state)
    return out.eval()
