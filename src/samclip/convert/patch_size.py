"""A SAM with a finer token grid made from a trained one: a smaller patch, or a larger image.

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

:func:`larger_image_sam` is the other way to the same grid: the same patch, a larger input image (e.g. 512 px
instead of 256 at patch 16, a 32x32 grid, as SAM itself reads 1024 px at patch 16). Only the position embedding
and the global blocks' relative-position tables change; the model then reads an image of the new size roughly
as the original read it at its own size, and needs the same fine-tuning. Its side of a merge keeps the same
patch as a CLIP side that reads smaller images.
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F

from ..models import Sam, SamConfig
from ..models.image_encoder import resize_abs_pos, resize_rel_pos


def with_patch_size(config: SamConfig, patch_size: int) -> SamConfig:
    """``config`` with its image encoder's patch size replaced (nothing else changes)."""
    return dataclasses.replace(config, image_encoder=dataclasses.replace(config.image_encoder, patch_size=patch_size))


def with_image_size(config: SamConfig, img_size: int) -> SamConfig:
    """``config`` with its image encoder's input size replaced (nothing else changes)."""
    return dataclasses.replace(config, image_encoder=dataclasses.replace(config.image_encoder, img_size=img_size))


def _with_resized_positions(sam: Sam, config: SamConfig, kernel_factor: int = 1) -> Sam:
    """A new Sam of ``config`` holding ``sam``'s weights; the position tensors resized to its grid and the patch
    kernel's cells summed ``kernel_factor`` x ``kernel_factor`` (1: kept). Returned in eval mode."""
    out = Sam.from_config(config)
    target = out.state_dict()
    state = {}
    for key, value in sam.state_dict().items():
        shape = target[key].shape
        if key == "image_encoder.patch_embed.proj.weight" and kernel_factor > 1:
            value = F.avg_pool2d(value, kernel_factor) * kernel_factor**2  # DxCxpxp -> DxCx(p/f)x(p/f), cell sums
        elif key == "image_encoder.pos_embed":
            value = resize_abs_pos(value, tuple(shape[1:3]))
        elif "rel_pos" in key and value.shape != shape:
            value = resize_rel_pos(value, shape[0])
        if value.shape != shape:  # every other tensor is independent of the grid
            raise ValueError(f"{key}: cannot map {tuple(value.shape)} to {tuple(shape)}")
        state[key] = value
    out.load_state_dict(state)
    return out.eval()


def larger_image_sam(sam: Sam, img_size: int) -> Sam:
    """A new Sam like ``sam`` (its weights are not changed) reading ``img_size`` px images at the same patch
    size: a grid of ``img_size / patch_size`` tokens a side. Returned in eval mode."""
    enc = sam.config.image_encoder
    if img_size < enc.patch_size or img_size % enc.patch_size:
        raise ValueError(f"img_size must be a multiple of the model's patch size {enc.patch_size}, got {img_size}")
    return _with_resized_positions(sam, with_image_size(sam.config, img_size))


def finer_patch_sam(sam: Sam, patch_size: int) -> Sam:
    """A new Sam like ``sam`` (any config; its weights are not changed) with the encoder's patch size
    ``patch_size``, which must divide the current one (16 -> 8, 4, ...). Returned in eval mode."""
    enc = sam.config.image_encoder
    if patch_size < 1 or enc.patch_size % patch_size:
        raise ValueError(f"patch_size must divide the model's patch size {enc.patch_size}, got {patch_size}")
    if enc.img_size % patch_size:
        raise ValueError(f"patch_size {patch_size} must divide the image size {enc.img_size}")
    return _with_resized_positions(sam, with_patch_size(sam.config, patch_size), enc.patch_size // patch_size)
