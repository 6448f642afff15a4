"""segment-anything (Meta's release) checkpoints.

Key layout: the official ``sam_vit_{b,l,h}_*.pth`` files are plain state dicts saved with
``torch.save`` whose keys are exactly ours (``image_encoder.patch_embed.proj.weight``,
``image_encoder.pos_embed``, ``image_encoder.blocks.N.attn.{qkv,proj,rel_pos_h,rel_pos_w}``,
``image_encoder.neck.{0,1,2,3}``, ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``,
``prompt_encoder.point_embeddings.N``, ``prompt_encoder.mask_downscaling.{0,1,3,4,6}``,
``mask_decoder.transformer.layers.N.*``, ``mask_decoder.output_hypernetworks_mlps.N.layers.M``,
``mask_decoder.iou_prediction_head.layers.M`` ...), so reading and writing them is a copy.

The files carry no config; :func:`infer_sam_config` reads the architecture off the tensor shapes.
Two numbers cannot be read from shapes: the mask decoder's head count (SAM's 8 is assumed) and,
for an encoder without relative positions, the encoder's head count (``embed_dim // 64``). Pass a
config to override.
"""

from __future__ import annotations

import re

import torch

from ..checkpoint import CheckpointError
from ..models import ImageEncoderConfig, MaskDecoderConfig, SamConfig

#: head width of every official SAM encoder; used only when the checkpoint has no rel-pos tables
DEFAULT_HEAD_DIM = 64


def to_segment_anything(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our SAM state dict in segment-anything's layout: the same keys, so this is a shallow copy.

    ``torch.save(to_segment_anything(sam.state_dict()), "sam.pth")`` writes a file that
    segment-anything's ``sam_model_registry[...](checkpoint=...)`` and :func:`samclip.load_sam` read.
    """
    return dict(state)


def from_segment_anything(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A segment-anything state dict in our layout (identity, see :func:`to_segment_anything`)."""
    return dict(state)


def _indices(state: dict[str, torch.Tensor], prefix: str) -> list[int]:
    """Sorted distinct N of keys ``{prefix}N.``."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pat.match(k))})


def _need(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(
            f"cannot infer the SAM architecture: the checkpoint has no {key!r}; pass config= explicitly"
        )
    return state[key]


def infer_sam_config(state: dict[str, torch.Tensor]) -> SamConfig:
    """Read a SAM architecture off a state dict in our (= segment-anything) layout.

    - ``embed_dim``, ``patch_size``, ``in_chans``: from ``patch_embed.proj.weight`` (D x C x p x p);
    - ``depth``: number of ``blocks.N``; ``mlp_ratio``: ``mlp.lin1`` rows / D;
    - ``img_size``: ``pos_embed`` grid x patch size (else the global rel-pos length);
    - ``num_heads``: D // ``rel_pos_h`` width (the head dim);
    - ``global_attn_indexes``: blocks whose ``rel_pos_h`` has ``2 * grid - 1`` rows; ``window_size``:
      (rows + 1) / 2 of the other blocks. A window as large as the grid cannot be told from global
      attention (both give the same output at the native size); such blocks count as global;
    - ``out_chans``: ``neck.0`` rows; ``mask_in_chans``: ``mask_downscaling.3`` rows;
    - decoder: depth (``transformer.layers.N``), MLP width (``mlp.lin1``), attention downsample rate
      (D / ``cross_attn_token_to_image.q_proj`` rows), mask tokens - 1 multimask outputs, IoU head
      depth and width. The decoder head count is not in the shapes: 8, as in every SAM release.
    """
    enc = "image_encoder."
    proj = _need(state, enc + "patch_embed.proj.weight")
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    blocks = _indices(state, enc + "blocks.")
    if not blocks:
        raise CheckpointError("cannot infer the SAM architecture: no image_encoder.blocks.N keys")
    depth = blocks[-1] + 1
    lin1 = _need(state, f"{enc}blocks.0.mlp.lin1.weight")
    use_abs_pos = enc + "pos_embed" in state
    use_rel_pos = f"{enc}blocks.0.attn.rel_pos_h" in state
    qkv_bias = f"{enc}blocks.0.attn.qkv.bias" in state

    rows = {i: state[f"{enc}blocks.{i}.attn.rel_pos_h"].shape[0] for i in blocks if use_rel_pos}
    if use_abs_pos:
        grid = state[enc + "pos_embed"].shape[1]
    elif rows:
        grid = (max(rows.values()) + 1) // 2
    else:
        raise CheckpointError("cannot infer the SAM input size (no pos_embed nor rel-pos); pass config=")
    img_size = grid * patch

    defaults = ImageEncoderConfig()
    if rows:
        head_dim = state[f"{enc}blocks.0.attn.rel_pos_h"].shape[1]
        global_idx = tuple(i for i in blocks if rows[i] == 2 * grid - 1)
        windows = {(r + 1) // 2 for i, r in rows.items() if i not in global_idx}
        if len(windows) > 1:
            raise CheckpointError(f"blocks use different window sizes {sorted(windows)}; not a SAM encoder")
        window = windows.pop() if windows else defaults.window_size
    else:
        head_dim = DEFAULT_HEAD_DIM
        global_idx, window = defaults.global_attn_indexes, defaults.window_size
    if embed_dim % head_dim:
        raise CheckpointError(f"head dim {head_dim} does not divide the encoder width {embed_dim}")

    image_encoder = ImageEncoderConfig(
        img_size=img_size,
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        mlp_ratio=lin1.shape[0] / embed_dim,
        out_chans=_need(state, enc + "neck.0.weight").shape[0],
        qkv_bias=qkv_bias,
        use_abs_pos=use_abs_pos,
        use_rel_pos=use_rel_pos,
        window_size=window,
        global_attn_indexes=global_idx,
    )

    dec = "mask_decoder."
    layers = _indices(state, dec + "transformer.layers.")
    if not layers:
        raise CheckpointError("cannot infer the SAM mask decoder: no mask_decoder.transformer.layers.N keys")
    dim = _need(state, dec + "iou_token.weight").shape[1]
    cross_q = _need(state, dec + "transformer.layers.0.cross_attn_token_to_image.q_proj.weight")
    iou_layers = _indices(state, dec + "iou_prediction_head.layers.")
    mask_decoder = MaskDecoderConfig(
        transformer_depth=layers[-1] + 1,
        transformer_mlp_dim=_need(state, dec + "transformer.layers.0.mlp.lin1.weight").shape[0],
        transformer_heads=MaskDecoderConfig().transformer_heads,
        attention_downsample_rate=dim // cross_q.shape[0],
        num_multimask_outputs=_need(state, dec + "mask_tokens.weight").shape[0] - 1,
        iou_head_depth=len(iou_layers),
        iou_head_hidden_dim=_need(state, dec + "iou_prediction_head.layers.0.weight").shape[0],
    )
    mask_in_chans = _need(state, "prompt_encoder.mask_downscaling.3.weight").shape[0]
    return SamConfig(image_encoder=image_encoder, mask_decoder=mask_decoder, mask_in_chans=mask_in_chans)
