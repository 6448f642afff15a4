"""Tiny random models for tests and examples: the real code path on a CPU in milliseconds."""

from __future__ import annotations

import torch

from .data import SHAPES, class_prompts
from .factory import create_sam
from .models import CLIP, ClipHeadConfig, SamClip, clip_preset
from .tokenizer import ClipTokenizer


def tiny_clip(seed: int = 0) -> CLIP:
    """``clip-tiny`` with a BPE trained on the scene-world class prompts (attached as ``.tokenizer``)."""
    torch.manual_seed(seed)
    tok = ClipTokenizer.train([p for s in SHAPES for p in class_prompts(s)] + ["a plain background"],
                              vocab_size=200, context_length=16)
    base = clip_preset("clip-tiny")
    clip = CLIP.from_config(base.replace(text=base.text.replace(
        vocab_size=tok.vocab_size, sot_token_id=tok.sot_token_id, eot_token_id=tok.eot_token_id))).eval()
    clip.tokenizer = tok
    return clip


def tiny_merged_model(seed: int = 0, dense_pool: int = 1) -> SamClip:
    """A random merged model from ``sam-tiny`` (128 px frame, grid 8) and :func:`tiny_clip`."""
    clip = tiny_clip(seed)
    sam = create_sam("sam-tiny").eval()
    head = ClipHeadConfig(mlp_hidden=16, out_dim=clip.config.embed_dim, dense_pool=dense_pool)
    return SamClip.from_teachers(sam, clip, head).eval()
