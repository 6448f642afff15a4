"""Recognise which model and key layout a state dict is in, from its key names alone.

Layouts (``detect_layout`` returns the first name):

- ``segment-anything``: ``image_encoder.patch_embed.proj.weight``, ``prompt_encoder.*``,
  ``mask_decoder.*`` (our SAM layout is exactly this one);
- ``hf-sam``: Hugging Face ``SamModel`` (``vision_encoder.patch_embed.projection.weight`` ...);
- ``openai-clip``: OpenAI / open_clip CLIP (``visual.conv1.weight``, ``visual.class_embedding``,
  ``token_embedding.weight`` or, with open_clip's ``CustomTextCLIP`` and ours,
  ``text.token_embedding.weight``);
- ``hf-clip``: Hugging Face ``CLIPModel`` (``vision_model.embeddings.patch_embedding.weight`` ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..checkpoint import CheckpointError, describe_mismatch

SAM_LAYOUTS = ("segment-anything", "hf-sam")
CLIP_LAYOUTS = ("openai-clip", "hf-clip")

SUPPORTED_SAM = (
    "samclip folder (config.json + model.safetensors)",
    "segment-anything .pth state dict",
    "Hugging Face SAM folder (config.json + model.safetensors / pytorch_model.bin)",
    "Hugging Face SAM .safetensors",
    "segment-anything-layout .safetensors",
)
SUPPORTED_CLIP = (
    "samclip folder (config.json + model.safetensors [+ tokenizer.json])",
    "OpenAI CLIP state dict .pt (TorchScript release files with trust_torchscript=True)",
    "open_clip checkpoint .pt/.bin (plain or {'state_dict': ...}, 'module.' prefixes)",
    "OpenAI / open_clip-layout .safetensors",
    "Hugging Face CLIP folder (config.json + model.safetensors / pytorch_model.bin)",
    "Hugging Face CLIP .safetensors",
)

_DESCRIPTION = {
    "segment-anything": "segment-anything SAM",
    "hf-sam": "Hugging Face SAM",
    "openai-clip": "OpenAI / open_clip CLIP",
    "hf-clip": "Hugging Face CLIP",
}


def detect_layout(keys: Iterable[str]) -> str | None:
    """The layout name of a state dict's keys, or None when unrecognised."""
    keys = set(keys)

    def has_prefix(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if "image_encoder.patch_embed.proj.weight" in keys or (
        has_prefix("image_encoder.blocks.") and has_prefix("mask_decoder.")
    ):
        return "segment-anything"
    if has_prefix("vision_encoder.patch_embed.projection.") or (
        has_prefix("vision_encoder.layers.") and has_prefix("mask_decoder.")
    ):
        return "hf-sam"
    if has_prefix("vision_model.embeddings.") or has_prefix("text_model.embeddings."):
        return "hf-clip"
    if keys & {"visual.conv1.weight", "token_embedding.weight", "text.token_embedding.weight"}:
        return "openai-clip"
    return None


def describe_layout(layout: str) -> str:
    return _DESCRIPTION.get(layout, layout)


def unrecognised(path: object, keys: Iterable[str], supported: tuple[str, ...], kind: str) -> CheckpointError:
    """One error for a checkpoint whose key layout is none we know."""
    first = ", ".join(sorted(keys)[:4]) or "none"
    return CheckpointError(
        f"{path}: unrecognised {kind} checkpoint layout (first keys: {first}). Supported: "
        + "; ".join(supported)
    )


def wrong_model(
    path: object, layout: str, found_keys: Iterable[str], expected_keys: Iterable[str], wanted: str
) -> CheckpointError:
    """One short error for a checkpoint of the other model type (e.g. a CLIP file given to load_sam)."""
    found, expected = set(found_keys), set(expected_keys)
    detail = describe_mismatch(sorted(expected - found), sorted(found - expected), [], wanted, limit=3)
    what = describe_layout(layout)
    return CheckpointError(f"{path}: this looks like a {what} checkpoint; {detail}")


def meta_state_keys(build: Callable[[], nn.Module]) -> list[str]:
    """Key names of a model built by ``build()`` on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = build()
    return list(model.state_dict())
