"""OpenAI CLIP and open_clip checkpoints.

Key layout (OpenAI's ``model.state_dict()``; open_clip's ``CLIP`` uses the same names):
``visual.conv1.weight``, ``visual.class_embedding``, ``visual.positional_embedding``,
``visual.ln_pre.*``, ``visual.transformer.resblocks.N.{ln_1,attn.in_proj_weight,attn.in_proj_bias,
attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}.*``, ``visual.ln_post.*``, ``visual.proj``; the text tower at
the top level: ``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.N.*``,
``ln_final.*``, ``text_projection``; and ``logit_scale``. Ours is the same with the text tower's keys
under ``text.`` (as in open_clip's ``CustomTextCLIP``, whose files therefore load unchanged).

Containers:

- OpenAI's release ``.pt`` files are TorchScript archives (refused unless ``trust_torchscript``);
  a ``torch.save``'d ``model.state_dict()`` (``.pt``) or a ``.safetensors`` of it load safely. The
  non-weight entries ``input_resolution``, ``context_length`` and ``vocab_size`` are dropped.
- open_clip training checkpoints are ``{"epoch", "name", "state_dict": {...}, "optimizer": ...}``,
  often with ``module.`` prefixes (DistributedDataParallel); both are unwrapped.

ResNet towers (RN50, RN101, RN50x4 ...) keep OpenAI's ModifiedResNet names (``visual.conv1..3``,
``visual.bn1..3``, ``visual.layerS.N.{conv1..3,bn1..3,downsample.0,downsample.1}``,
``visual.attnpool.{positional_embedding,q_proj,k_proj,v_proj,c_proj}``); BatchNorm
``num_batches_tracked`` counters, absent from some exports, are filled with zeros.

Architecture inference (:func:`infer_clip_config`) follows OpenAI's ``build_model``: widths from
``conv1`` / ``ln_final``, layers from resblock counts, patch size from ``conv1``, grid from
``visual.positional_embedding``, embed dim from ``text_projection``, context length and vocabulary
from the text tables, and heads = width // 64. The activation cannot be read from a state dict:
OpenAI's models use QuickGELU, which is the default here, while most open_clip models trained by
others (LAION, DataComp ...) use exact GELU - load those with ``config=`` (e.g. a preset with
``act="gelu"``). The end-of-text token is taken to be the last vocabulary id, the start token the
one before it (OpenAI's tokenizer; OpenAI pools at the argmax id, i.e. the end token).
"""

from __future__ import annotations

import re

import torch

from ..checkpoint import CheckpointError
from ..models import ClipConfig, TextTowerConfig, VisionTowerConfig

#: entries of OpenAI / open_clip state dicts that are not weights
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask", "text.attn_mask")
#: OpenAI's CLIP: 64-wide attention heads in both towers
HEAD_DIM = 64

_TOP_LEVEL = ("logit_scale",)


def from_openai(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI / open_clip keys -> ours: the text tower's keys gain a ``text.`` prefix.

    Keys already under ``text.`` (open_clip ``CustomTextCLIP``, our own files) stay as they are.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in NON_WEIGHT_KEYS:
            continue
        if key.startswith(("visual.", "text.")) or key in _TOP_LEVEL:
            out[key] = value
        else:
            out["text." + key] = value
    for key in [k for k in out if k.endswith(".running_mean")]:
        out.setdefault(key[: -len("running_mean")] + "num_batches_tracked", torch.zeros((), dtype=torch.long))
    return out


def to_openai(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our CLIP state dict -> OpenAI / open_clip keys (the ``text.`` prefix removed)."""
    return {(k[len("text."):] if k.startswith("text.") else k): v for k, v in state.items()}


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(found) + 1 if found else 0


def _need(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(
            f"cannot infer the CLIP architecture: the checkpoint has no {key!r}; pass config= explicitly"
        )
    return state[key]


def _heads(width: int) -> int:
    if width % HEAD_DIM:
        raise CheckpointError(
            f"cannot infer the head count of a {width}-wide tower (OpenAI's rule is width // {HEAD_DIM}); "
            "pass config= explicitly"
        )
    return width // HEAD_DIM


def infer_clip_config(state: dict[str, torch.Tensor], act: str = "quick_gelu") -> ClipConfig:
    """A :class:`ClipConfig` from a state dict in our layout (see the module docstring)."""
    if "visual.attnpool.positional_embedding" in state:
        v_width = _need(state, "visual.layer1.0.conv1.weight").shape[0]
        grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        depths = tuple(_count(state, f"visual.layer{i}.") for i in range(1, 5))
        vision = VisionTowerConfig(image_size=grid * 32, width=v_width, layers=depths,
                                   heads=v_width * 32 // HEAD_DIM, act=act)
    else:
        conv1 = _need(state, "visual.conv1.weight")
        v_width, patch = conv1.shape[0], conv1.shape[-1]
        v_layers = _count(state, "visual.transformer.resblocks.")
        grid = round((_need(state, "visual.positional_embedding").shape[0] - 1) ** 0.5)
        v_fc = _need(state, "visual.transformer.resblocks.0.mlp.c_fc.weight")
        vision = VisionTowerConfig(
            image_size=grid * patch, patch_size=patch, width=v_width, layers=v_layers, heads=_heads(v_width),
            mlp_ratio=v_fc.shape[0] / v_width, act=act,
        )
    vocab = _need(state, "text.token_embedding.weight").shape[0]
    t_width = _need(state, "text.ln_final.weight").shape[0]
    t_fc = _need(state, "text.transformer.resblocks.0.mlp.c_fc.weight")
    text = TextTowerConfig(
        context_length=_need(state, "text.positional_embedding").shape[0],
        vocab_size=vocab,
        width=t_width,
        heads=_heads(t_width),
        layers=_count(state, "text.transformer.resblocks."),
        mlp_ratio=t_fc.shape[0] / t_width,
        act=act,
        sot_token_id=vocab - 2,
        eot_token_id=vocab - 1,
        pad_token_id=0,
    )
    return ClipConfig(embed_dim=_need(state, "text.text_projection").shape[1], vision=vision, text=text)
