"""Named architectures (sizes only, no weights). Weights live in ``samclip.pretrained``."""

from __future__ import annotations

from .configs import (
    ClipConfig,
    ImageEncoderConfig,
    MaskDecoderConfig,
    SamConfig,
    TextTowerConfig,
    VisionTowerConfig,
)


def _sam(embed_dim: int, depth: int, heads: int, global_idx: tuple[int, ...]) -> SamConfig:
    return SamConfig(
        image_encoder=ImageEncoderConfig(
            embed_dim=embed_dim, depth=depth, num_heads=heads, global_attn_indexes=global_idx
        )
    )


SAM_PRESETS: dict[str, SamConfig] = {
    # as published by segment-anything (build_sam.py): 1024 px, patch 16, window 14, neck 256
    "sam-vit-b": _sam(768, 12, 12, (2, 5, 8, 11)),
    "sam-vit-l": _sam(1024, 24, 16, (5, 11, 17, 23)),
    "sam-vit-h": _sam(1280, 32, 16, (7, 15, 23, 31)),
    # tiny: unit tests (random weights); same code path, seconds on a CPU
    "sam-tiny": SamConfig(
        image_encoder=ImageEncoderConfig(
            img_size=128, patch_size=16, embed_dim=32, depth=2, num_heads=2, out_chans=32,
            window_size=4, global_attn_indexes=(1,),
        ),
        mask_decoder=MaskDecoderConfig(
            transformer_depth=2, transformer_mlp_dim=64, transformer_heads=2, iou_head_hidden_dim=32
        ),
        mask_in_chans=8,
    ),
    # the embedded default's SAM teacher: trained by us on the scene world at 256 px (grid 16)
    "sam-synthetic": SamConfig(
        image_encoder=ImageEncoderConfig(
            img_size=256, patch_size=16, embed_dim=160, depth=6, num_heads=5, out_chans=96,
            window_size=8, global_attn_indexes=(2, 5),
        ),
        mask_decoder=MaskDecoderConfig(
            transformer_depth=2, transformer_mlp_dim=384, transformer_heads=4, iou_head_hidden_dim=96
        ),
        mask_in_chans=16,
    ),
}


def _clip(
    embed: int, v_width: int, v_layers: int, v_heads: int, patch: int, t_width: int, t_heads: int,
    act: str = "quick_gelu",
) -> ClipConfig:
    return ClipConfig(
        embed_dim=embed,
        vision=VisionTowerConfig(
            image_size=224, patch_size=patch, width=v_width, layers=v_layers, heads=v_heads, act=act
        ),
        text=TextTowerConfig(width=t_width, heads=t_heads, layers=12, act=act),
    )


CLIP_PRESETS: dict[str, ClipConfig] = {
    # OpenAI CLIP (quick_gelu), as published
    "clip-vit-b-32": _clip(512, 768, 12, 12, 32, 512, 8),
    "clip-vit-b-16": _clip(512, 768, 12, 12, 16, 512, 8),
    "clip-vit-l-14": _clip(768, 1024, 24, 16, 14, 768, 12),
    # the same towers with GELU: open_clip's own trainings (LAION, DataComp: the SAM-CLIP paper's teacher)
    "clip-vit-b-16-gelu": _clip(512, 768, 12, 12, 16, 512, 8, act="gelu"),
    "clip-vit-l-14-gelu": _clip(768, 1024, 24, 16, 14, 768, 12, act="gelu"),
    "clip-tiny": ClipConfig(
        embed_dim=32,
        vision=VisionTowerConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2),
        text=TextTowerConfig(
            context_length=16, vocab_size=100, width=32, heads=2, layers=2, sot_token_id=98, eot_token_id=99
        ),
    ),
    # OpenAI's ResNet towers (width = stem width, heads = width * 32 // 64)
    "clip-rn50": ClipConfig(
        embed_dim=1024,
        vision=VisionTowerConfig(image_size=224, width=64, layers=(3, 4, 6, 3), heads=32),
        text=TextTowerConfig(width=512, heads=8, layers=12),
    ),
    "clip-rn101": ClipConfig(
        embed_dim=512,
        vision=VisionTowerConfig(image_size=224, width=64, layers=(3, 4, 23, 3), heads=32),
        text=TextTowerConfig(width=512, heads=8, layers=12),
    ),
    # The embedded default's CLIP teacher at 64 px (vocab / special ids come from its trained
    # tokenizer): a tiny ModifiedResNet (a ViT this small trained from scratch on
    # 2 CPU cores stays near chance on shape; the convolutional tower learns shape within minutes).
    "clip-synthetic": ClipConfig(
        embed_dim=128,
        vision=VisionTowerConfig(image_size=64, width=16, layers=(1, 1, 1, 1), heads=8),
        text=TextTowerConfig(
            context_length=32, vocab_size=512, width=128, heads=4, layers=4, act="gelu",
            sot_token_id=510, eot_token_id=511,
        ),
    ),
}

_ALIASES = {
    "vit_b": "sam-vit-b", "vit_l": "sam-vit-l", "vit_h": "sam-vit-h", "default": "sam-vit-h",
    "ViT-B-32": "clip-vit-b-32", "ViT-B/32": "clip-vit-b-32",
    "ViT-B-16": "clip-vit-b-16", "ViT-B/16": "clip-vit-b-16",
    "ViT-L-14": "clip-vit-l-14", "ViT-L/14": "clip-vit-l-14",
    "RN50": "clip-rn50", "RN101": "clip-rn101",
}


def canonical_name(name: str) -> str:
    """Map aliases (``vit_b``, ``ViT-B/16`` ...) to the registry name."""
    return _ALIASES.get(name, name)


def sam_preset(name: str) -> SamConfig:
    key = canonical_name(name)
    if key not in SAM_PRESETS:
        raise KeyError(f"unknown SAM preset {name!r}; known: {', '.join(sorted(SAM_PRESETS))}")
    return SAM_PRESETS[key]


def clip_preset(name: str) -> ClipConfig:
    key = canonical_name(name)
    if key not in CLIP_PRESETS:
        raise KeyError(f"unknown CLIP preset {name!r}; known: {', '.join(sorted(CLIP_PRESETS))}")
    return CLIP_PRESETS[key]
