"""The SAM side as a segment-anything checkpoint: ``sam_vit_*.pth``-style, for every tool that loads SAM weights.

segment-anything's releases are plain state dicts saved with ``torch.save`` (keys such as
``image_encoder.blocks.0.attn.qkv.weight``, ``prompt_encoder.point_embeddings.0.weight``,
``mask_decoder.iou_token.weight``; see :mod:`samclip.convert.segment_anything`). :func:`export_sam_checkpoint`
writes a merged model's SAM side (backbone with its neck, prompt encoder, mask decoder: what the SAM head
computes) or any SAM samclip reads (Hugging Face folders included) in that form, fp32 on the CPU, so that
``segment_anything.sam_model_registry["vit_b"](checkpoint=path)`` (for a ViT-B backbone, and likewise ViT-L /
ViT-H) and :func:`samclip.load_sam` read it. The CLIP head and text tower are not in it: SAM has no place for them.
Such a file holds no config: readers infer the architecture from the tensor shapes, which cannot tell every
choice (the mask decoder's head count is taken to be SAM's 8). A model those readers would rebuild differently
(tiny-synthetic's 4-head decoder, for one) is refused with the fields named, rather than written to be misread.

    samclip export sam-pth --model runs/paper/model --out sam_merged_vit_b.pth
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ..checkpoint import atomic_file
from ..convert.segment_anything import infer_sam_config, to_segment_anything
from ..models.configs import SamConfig
from ..models.sam import Sam
from ..models.samclip import SamClip
from .sam_source import load_sam_side

SUFFIXES = (".pth", ".pt")


def _unrecorded(config: SamConfig, inferred: SamConfig, prefix: str = "") -> list[str]:
    """The fields where the architecture a reader infers from the tensors differs from the model's own."""
    out = []
    for field in dataclasses.fields(config):
        mine, theirs = getattr(config, field.name), getattr(inferred, field.name)
        if dataclasses.is_dataclass(mine):
            out += _unrecorded(mine, theirs, f"{prefix}{field.name}.")
        elif mine != theirs:
            out.append(f"{prefix}{field.name}: {mine!r} here, {theirs!r} as read from the tensors")
    return out


def export_sam_checkpoint(model: Sam | SamClip | str | os.PathLike, out: str | os.PathLike, *, kind: str = "auto",
                          overwrite: bool = True) -> Path:
    """Write ``model``'s SAM side to the file ``out`` (``.pth`` / ``.pt``) as a segment-anything checkpoint.

    ``model`` and ``kind`` as :func:`~samclip.export.sam_source.load_sam_side` reads them. Floating-point tensors
    are written as fp32 (as the official releases), every tensor on the CPU and contiguous. The file is written
    to a temporary name beside ``out`` and renamed (:func:`~samclip.checkpoint.atomic_file`), so ``out`` is never
    half-written. Returns ``out``."""
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder; give the checkpoint's file name")
    if out.suffix not in SUFFIXES:
        raise ValueError(f"{out}: a segment-anything checkpoint is a {' / '.join(SUFFIXES)} file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    sam, _, _ = load_sam_side(model, kind)
    state = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in to_segment_anything(sam.state_dict()).items()}
    lost = _unrecorded(sam.config, infer_sam_config(state))
    if lost:
        raise ValueError("a segment-anything checkpoint holds no config, and its readers would build another model "
                         f"than this one ({'; '.join(lost)}); keep it in samclip's format (save_pretrained: "
                         "config.json beside the weights) or export sam-onnx")
    with atomic_file(out) as tmp:
        torch.save(state, tmp)
    return out


__all__ = ["export_sam_checkpoint"]
