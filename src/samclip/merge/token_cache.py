"""The frozen-backbone token cache of stages I and III.

In stages I and III the backbone is frozen, so its tokens for a D_CLIP image at a given size never
change. Computing them once (in fixed chunks of image ids, so a resumed or distributed run sees
bit-identical tokens) turns every later step of the stage into a CLIP-head-only step. Stage I caches
the whole stream; stage III, with its larger sizes, the first ``data.stage3_token_cache_images``. Memory:
N x G x G x D per size, 2 B per value in bf16 and 4 B in fp32 (tiny-synthetic: 16000 x 8 x 8 x 160 at 128 px
= 0.33 GB in bf16, 0.66 GB in fp32).
"""

from __future__ import annotations

import numpy as np
import torch

from ..models import SamClip
from ..precision import autocast
from .streams import ClipStream

CHUNK = 256


@torch.no_grad()
def backbone_tokens(model: SamClip, stream: ClipStream, size: int, bf16: bool, progress: bool = False,
                    limit: int | None = None, stage: int = 1) -> torch.Tensor:
    """Frozen backbone tokens of the first ``limit`` (default: all) stream images at ``size`` px
    -> NxGxGxD (bf16 if ``bf16``, else fp32)."""
    from .trainer import to_student_pixels

    n = len(stream) if limit is None else min(limit, len(stream))
    chunks = range(0, n, CHUNK)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc=f"stage {'I' * stage} token cache @{size}px", unit="chunk", leave=False)
    out = []
    was_training = model.training
    model.eval()
    for start in chunks:
        ids = np.arange(start, min(start + CHUNK, n))
        x = to_student_pixels(model, stream.images(ids), size)
        with autocast(x.device, bf16):
            out.append(model.features(x).tokens.to(torch.bfloat16 if bf16 else torch.float32))
    model.train(was_training)
    return torch.cat(out)
