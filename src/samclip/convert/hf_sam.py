"""Hugging Face ``transformers`` SAM (``SamModel``) checkpoints.

A Hugging Face SAM folder holds ``config.json`` (``model_type: "sam"``, with ``vision_config``,
``prompt_encoder_config`` and ``mask_decoder_config``) and ``model.safetensors`` or
``pytorch_model.bin`` (possibly sharded). Key layout, Hugging Face -> ours (segment-anything's):

- ``vision_encoder.patch_embed.projection`` -> ``image_encoder.patch_embed.proj``;
  ``vision_encoder.pos_embed`` -> ``image_encoder.pos_embed``;
- ``vision_encoder.layers.N.layer_norm{1,2}`` -> ``image_encoder.blocks.N.norm{1,2}``;
  ``vision_encoder.layers.N.{attn,mlp}.*`` -> ``image_encoder.blocks.N.{attn,mlp}.*``;
- ``vision_encoder.neck.{conv1,layer_norm1,conv2,layer_norm2}`` -> ``image_encoder.neck.{0,1,2,3}``;
- ``shared_image_embedding.positional_embedding`` ->
  ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``
  (``prompt_encoder.shared_embedding.positional_embedding`` is a tied copy and is dropped);
- ``prompt_encoder.point_embed.N`` -> ``prompt_encoder.point_embeddings.N``;
- ``prompt_encoder.mask_embed.{conv1,layer_norm1,conv2,layer_norm2,conv3}`` ->
  ``prompt_encoder.mask_downscaling.{0,1,3,4,6}``;
- ``mask_decoder.transformer.layers.N.layer_norm{1..4}`` -> ``mask_decoder.transformer.layers.N.norm{1..4}``;
  ``mask_decoder.transformer.layer_norm_final_attn`` -> ``mask_decoder.transformer.norm_final_attn``;
- ``mask_decoder.{upscale_conv1,upscale_layer_norm,upscale_conv2}`` ->
  ``mask_decoder.output_upscaling.{0,1,3}``;
- ``mask_decoder.{output_hypernetworks_mlps.N,iou_prediction_head}.{proj_in,layers.K,proj_out}`` ->
  ``... .layers.{0, K+1, depth-1}``.

Everything else (``not_a_point_embed``, ``no_mask_embed``, ``iou_token``, ``mask_tokens``, the
decoder's attention projections and ``mlp.lin{1,2}``) has the same name. Unknown keys are kept as
they are so that a strict load names them.

Note: Hugging Face builds the mask decoder's transformer LayerNorms with ``eps=1e-6`` where
segment-anything (and we) use PyTorch's default ``1e-5``; the difference is far below 1e-4 on
real activations.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError
from ..models import ImageEncoderConfig, MaskDecoderConfig, SamConfig

# transformers' SamVisionConfig / SamPromptEncoderConfig / SamMaskDecoderConfig defaults, used for
# fields a (diff-serialised) config.json leaves out
HF_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "output_channels": 256, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 1024, "patch_size": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
    "qkv_bias": True, "mlp_ratio": 4.0, "use_abs_pos": True, "use_rel_pos": True, "window_size": 14,
    "global_attn_indexes": [2, 5, 8, 11], "mlp_dim": None,
}
HF_PROMPT_DEFAULTS: dict[str, Any] = {"mask_input_channels": 16}
HF_DECODER_DEFAULTS: dict[str, Any] = {
    "hidden_act": "relu", "mlp_dim": 2048, "num_hidden_layers": 2, "num_attention_heads": 8,
    "attention_downsample_rate": 2, "num_multimask_outputs": 3, "iou_head_depth": 3,
    "iou_head_hidden_dim": 256,
}

_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^vision_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
        (r"^vision_encoder\.pos_embed$", "image_encoder.pos_embed"),
        (r"^vision_encoder\.layers\.(\d+)\.layer_norm([12])\.", r"image_encoder.blocks.\1.norm\2."),
        (r"^vision_encoder\.layers\.(\d+)\.(attn|mlp)\.", r"image_encoder.blocks.\1.\2."),
        (r"^vision_encoder\.neck\.conv1\.", "image_encoder.neck.0."),
        (r"^vision_encoder\.neck\.layer_norm1\.", "image_encoder.neck.1."),
        (r"^vision_encoder\.neck\.conv2\.", "image_encoder.neck.2."),
        (r"^vision_encoder\.neck\.layer_norm2\.", "image_encoder.neck.3."),
        (r"^shared_image_embedding\.positional_embedding$",
         "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
        (r"^prompt_encoder\.point_embed\.(\d+)\.", r"prompt_encoder.point_embeddings.\1."),
        (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
        (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
        (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
        (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
        (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
        (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm([1-4])\.",
         r"mask_decoder.transformer.layers.\1.norm\2."),
        (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
        (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
        (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
        (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
    ]
]
_TIED_COPY = "prompt_encoder.shared_embedding.positional_embedding"
_FFN = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))"
    r"\.(proj_in|proj_out|layers\.(\d+))\.(.+)$"
)


def hf_sam_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``SamModel`` state dict to our (segment-anything) layout."""
    state = dict(state)
    if "shared_image_embedding.positional_embedding" not in state and _TIED_COPY in state:
        state["shared_image_embedding.positional_embedding"] = state[_TIED_COPY]
    state.pop(_TIED_COPY, None)

    # HF's SamFeedForward: proj_in, layers.0..depth-3, proj_out -> our MLP layers.0..depth-1
    hidden_counts: dict[str, int] = {}
    for k in state:
        m = _FFN.match(k)
        if m and m.group(3) is not None:
            hidden_counts[m.group(1)] = max(hidden_counts.get(m.group(1), 0), int(m.group(3)) + 1)

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        m = _FFN.match(key)
        if m:
            mlp, part, idx, rest = m.groups()
            if part == "proj_in":
                j = 0
            elif part == "proj_out":
                j = hidden_counts.get(mlp, 0) + 1
            else:
                j = int(idx) + 1
            new = f"{mlp}.layers.{j}.{rest}"
        else:
            for pat, rep in _RENAMES:
                if pat.search(key):
                    new = pat.sub(rep, key)
                    break
        out[new] = value
    return out


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"non-square {name} {value} is not supported")
        return int(value[0])
    return int(value)


def sam_config_from_hf(hf: dict[str, Any]) -> SamConfig:
    """Our :class:`SamConfig` from a Hugging Face SAM ``config.json`` dict."""
    v = {**HF_VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    p = {**HF_PROMPT_DEFAULTS, **(hf.get("prompt_encoder_config") or {})}
    d = {**HF_DECODER_DEFAULTS, **(hf.get("mask_decoder_config") or {})}
    if v["hidden_act"] != "gelu" or d["hidden_act"] != "relu":
        raise CheckpointError(
            f"unsupported SAM activations (vision {v['hidden_act']!r}, decoder {d['hidden_act']!r}); "
            "expected gelu / relu"
        )
    hidden = int(v["hidden_size"])
    mlp_ratio = float(v["mlp_dim"]) / hidden if v.get("mlp_dim") else float(v["mlp_ratio"])
    image_encoder = ImageEncoderConfig(
        img_size=_square(v["image_size"], "image_size"),
        patch_size=_square(v["patch_size"], "patch_size"),
        in_chans=int(v["num_channels"]),
        embed_dim=hidden,
        depth=int(v["num_hidden_layers"]),
        num_heads=int(v["num_attention_heads"]),
        mlp_ratio=mlp_ratio,
        out_chans=int(v["output_channels"]),
        qkv_bias=bool(v["qkv_bias"]),
        use_abs_pos=bool(v["use_abs_pos"]),
        use_rel_pos=bool(v["use_rel_pos"]),
        window_size=int(v["window_size"]),
        global_attn_indexes=tuple(int(i) for i in v["global_attn_indexes"]),
        layer_norm_eps=float(v["layer_norm_eps"]),
    )
    mask_decoder = MaskDecoderConfig(
        transformer_depth=int(d["num_hidden_layers"]),
        transformer_mlp_dim=int(d["mlp_dim"]),
        transformer_heads=int(d["num_attention_heads"]),
        attention_downsample_rate=int(d["attention_downsample_rate"]),
        num_multimask_outputs=int(d["num_multimask_outputs"]),
        iou_head_depth=int(d["iou_head_depth"]),
        iou_head_hidden_dim=int(d["iou_head_hidden_dim"]),
    )
    return SamConfig(image_encoder=image_encoder, mask_decoder=mask_decoder,
                     mask_in_chans=int(p["mask_input_channels"]))


def read_hf_config(folder: Path) -> dict[str, Any]:
    """A Hugging Face ``config.json`` as a dict (empty when absent)."""
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data
