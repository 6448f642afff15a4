"""What a step of each merge stage costs, relative to the others, for the progress bar's ETA.

The merge's stages differ a lot per step: on the embedded default a stage-I step (the CLIP head on cached
tokens) takes ~0.17 s, a stage-II step (backbone forward and backward on both data streams) ~0.7 s and a
stage-III step (the head at two sizes plus region distillation at 256 px) ~0.4 s. A bar that counts steps
therefore promises the end far too early while stage I runs. The bar counts estimated work instead: per
step, the multiply-adds of the transformer blocks it runs (projections and MLP, plus attention over the
tokens each token attends to), a backward pass counted as two forwards. The estimate leaves out what
costs little in the blocks' terms (patch embedding, losses, the SAM decoder, teachers' forward passes
while their outputs are not cached yet); on the embedded default it puts stage II at 3.5x and stage III
at 2.1x a stage-I step (measured: 4.2x and 2.4x).
"""

from __future__ import annotations

import math

from ..models import ImageEncoderConfig
from .config import MergeConfig

FORWARD_AND_BACKWARD = 3.0  # a backward pass costs about twice the forward


def block_cost(encoder: ImageEncoderConfig, grid: int, window: int) -> float:
    """Multiply-adds of one transformer block of ``encoder``'s width on a ``grid`` x ``grid`` token map, for one
    image: ``window`` > 0 is windowed attention (the map padded to whole windows), 0 is global."""
    d = encoder.embed_dim
    if window > 0:
        side = math.ceil(grid / window) * window
        tokens, attended = side * side, window * window
    else:
        tokens = attended = grid * grid
    return tokens * ((4 + 2 * encoder.mlp_ratio) * d * d + 2 * attended * d)


def backbone_cost(encoder: ImageEncoderConfig, size: int) -> float:
    """One image's forward pass through the encoder's blocks at ``size`` px."""
    grid = size // encoder.patch_size
    return sum(block_cost(encoder, grid, 0 if i in encoder.global_attn_indexes else encoder.window_size)
               for i in range(encoder.depth))


def head_cost(encoder: ImageEncoderConfig, head_depth: int, size: int) -> float:
    """One image's forward pass through the CLIP head's (global-attention) blocks at ``size`` px."""
    return head_depth * block_cost(encoder, size // encoder.patch_size, 0)


def image_step_cost(encoder: ImageEncoderConfig, head_depth: int, size: int, stage: int, cached: bool) -> float:
    """One image of a step at ``size`` px: the CLIP head trained on it, and the backbone trained too (stage
    II) or run frozen (stages I / III) unless its tokens are cached."""
    head = FORWARD_AND_BACKWARD * head_cost(encoder, head_depth, size)
    if stage == 2:
        return head + FORWARD_AND_BACKWARD * backbone_cost(encoder, size)
    return head + (0.0 if cached else backbone_cost(encoder, size))


def stage_step_costs(cfg: MergeConfig, encoder: ImageEncoderConfig, head_depth: int,
                     sam_size: int) -> dict[int, float]:
    """Estimated work of one step of each stage (multiply-adds; only the ratios matter)."""
    d = cfg.data
    costs = {}
    for stage in (1, 2, 3):
        cached = (stage == 1 and d.stage1_token_cache) or (stage == 3 and d.stage3_token_cache_images > 0)

        def mean_image(sizes: list[int], stage: int = stage, cached: bool = cached) -> float:
            """Each step draws one of ``sizes`` uniformly."""
            return sum(image_step_cost(encoder, head_depth, s, stage, cached) for s in sizes) / len(sizes)

        sizes = d.stage3_sizes if stage == 3 else d.clip_sizes
        cost = d.clip_batch * mean_image(sizes)
        if stage == 2:
            cost += d.sam_batch * FORWARD_AND_BACKWARD * backbone_cost(encoder, sam_size)
        if stage in cfg.region_stages and cfg.uses_regions:
            steps = cfg.stage1.steps if stage == 1 else 0
            share = (steps - min(cfg.region_start, steps)) / steps if steps else 1.0  # stage I: from region_start
            cost += share * d.region_images * mean_image(d.region_sizes or sizes)
        costs[stage] = cost
    return costs
