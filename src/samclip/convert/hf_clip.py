"""Hugging Face ``transformers`` CLIP (``CLIPModel``) checkpoints.

A Hugging Face CLIP folder holds ``config.json`` (``model_type: "clip"``, with ``text_config`` and
``vision_config``), ``model.safetensors`` or ``pytorch_model.bin`` (possibly sharded), and usually a
tokenizer (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``). Key layout -> ours:

- ``vision_model.embeddings.patch_embedding.weight`` -> ``visual.conv1.weight``;
  ``vision_model.embeddings.class_embedding`` -> ``visual.class_embedding``;
  ``vision_model.embeddings.position_embedding.weight`` -> ``visual.positional_embedding``;
- ``vision_model.pre_layrnorm`` / ``post_layernorm`` -> ``visual.ln_pre`` / ``visual.ln_post``;
- ``{vision,text}_model.encoder.layers.N.`` -> ``{visual,text}.transformer.resblocks.N.`` with
  ``self_attn.{q,k,v}_proj.{weight,bias}`` concatenated (q, k, v order) into
  ``attn.in_proj_{weight,bias}``, ``self_attn.out_proj`` -> ``attn.out_proj``,
  ``layer_norm{1,2}`` -> ``ln_{1,2}``, ``mlp.fc1`` / ``mlp.fc2`` -> ``mlp.c_fc`` / ``mlp.c_proj``;
- ``text_model.embeddings.token_embedding.weight`` -> ``text.token_embedding.weight``;
  ``text_model.embeddings.position_embedding.weight`` -> ``text.positional_embedding``;
  ``text_model.final_layer_norm`` -> ``text.ln_final``;
- ``visual_projection.weight`` (E x W) -> ``visual.proj`` (its transpose, W x E); likewise
  ``text_projection.weight`` -> ``text.text_projection``; ``logit_scale`` unchanged;
- ``*.position_ids`` buffers (older files) are dropped.

Config: ``hidden_act`` (``quick_gelu`` / ``gelu``) -> ``act`` per tower, ``layer_norm_eps``,
``intermediate_size / hidden_size`` -> ``mlp_ratio``, ``max_position_embeddings`` ->
``context_length``, ``projection_dim`` -> ``embed_dim``, ``bos_token_id`` / ``eos_token_id`` ->
``sot_token_id`` / ``eot_token_id``. Hugging Face pools the text feature at the first
``eos_token_id``, except for old configs with ``eos_token_id == 2`` where it pools at the argmax id;
for those the end token is taken to be the last vocabulary id, as in OpenAI's tokenizer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError
from ..models import ClipConfig, TextTowerConfig, VisionTowerConfig
from ..tokenizer import ClipTokenizer

# transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults (for diff-serialised configs)
HF_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
    "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407,
}
HF_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
HF_PROJECTION_DIM = 512
HF_LOGIT_SCALE_INIT = 2.6592

_TOWERS = (("vision_model.", "visual."), ("text_model.", "text."))
_SIMPLE: list[tuple[str, str]] = [
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.", "visual.ln_pre."),
    ("vision_model.post_layernorm.", "visual.ln_post."),
    ("text_model.embeddings.token_embedding.weight", "text.token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "text.positional_embedding"),
    ("text_model.final_layer_norm.", "text.ln_final."),
]
_LAYER = re.compile(r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)$")
_IN_LAYER = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}


def hf_clip_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename / repack a Hugging Face ``CLIPModel`` state dict into our layout."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key == "visual_projection.weight":
            out["visual.proj"] = value.T.contiguous()
            continue
        if key == "text_projection.weight":
            out["text.text_projection"] = value.T.contiguous()
            continue
        m = _LAYER.match(key)
        if m:
            tower, idx, rest = m.groups()
            base = f"{'visual' if tower == 'vision_model' else 'text'}.transformer.resblocks.{idx}."
            pm = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
            if pm:
                qkv.setdefault((base, pm.group(2)), {})[pm.group(1)] = value
                continue
            for old, new in _IN_LAYER.items():
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            out[base + rest] = value
            continue
        for old, new in _SIMPLE:
            if key == old or (old.endswith(".") and key.startswith(old)):
                key = new + key[len(old):]
                break
        out[key] = value
    for (base, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"incomplete attention projections under {base}: only {sorted(parts)}")
        out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _eos(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def clip_config_from_hf(hf: dict[str, Any]) -> ClipConfig:
    """Our :class:`ClipConfig` from a Hugging Face CLIP ``config.json`` dict."""
    t = {**HF_TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    v = {**HF_VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    for name, tower in (("text", t), ("vision", v)):
        if tower["hidden_act"] not in ("quick_gelu", "gelu"):
            raise CheckpointError(f"unsupported {name} activation {tower['hidden_act']!r}")
    vocab = int(t["vocab_size"])
    eos = _eos(t["eos_token_id"])
    eot = vocab - 1 if eos == 2 else eos  # HF's legacy argmax pooling for eos_token_id == 2
    bos = t.get("bos_token_id")
    sot = int(bos) if bos is not None and eos != 2 else vocab - 2
    t_width, v_width = int(t["hidden_size"]), int(v["hidden_size"])
    image_size, patch = v["image_size"], v["patch_size"]
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[0]
    if isinstance(patch, (list, tuple)):
        patch = patch[0]
    return ClipConfig(
        embed_dim=int(hf.get("projection_dim") or HF_PROJECTION_DIM),
        vision=VisionTowerConfig(
            image_size=int(image_size), patch_size=int(patch), width=v_width,
            layers=int(v["num_hidden_layers"]), heads=int(v["num_attention_heads"]),
            mlp_ratio=int(v["intermediate_size"]) / v_width, act=v["hidden_act"],
            layer_norm_eps=float(v["layer_norm_eps"]),
        ),
        text=TextTowerConfig(
            context_length=int(t["max_position_embeddings"]), vocab_size=vocab, width=t_width,
            heads=int(t["num_attention_heads"]), layers=int(t["num_hidden_layers"]),
            mlp_ratio=int(t["intermediate_size"]) / t_width, act=t["hidden_act"],
            layer_norm_eps=float(t["layer_norm_eps"]), sot_token_id=sot, eot_token_id=eot, pad_token_id=0,
        ),
        init_logit_scale=float(hf.get("logit_scale_init_value") or HF_LOGIT_SCALE_INIT),
    )


def read_hf_tokenizer(folder: Path, context_length: int) -> ClipTokenizer | None:
    """The tokenizer of a Hugging Face CLIP folder (``tokenizer.json``, else ``vocab.json`` +
    ``merges.txt``), or None when the folder has neither. Padding / truncation settings stored in
    ``tokenizer.json`` are cleared: :class:`ClipTokenizer` does its own framing."""
    try:
        if (folder / "tokenizer.json").is_file():
            tok = ClipTokenizer.from_file(folder / "tokenizer.json", context_length)
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab, merges = folder / "vocab.json", folder / "merges.txt"
            tok = ClipTokenizer.from_vocab_merges(vocab, merges, context_length)
        else:
            return None
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise CheckpointError(f"{folder}: unreadable tokenizer files ({e})") from e
    tok.tokenizer.no_padding()
    tok.tokenizer.no_truncation()
    return tok
