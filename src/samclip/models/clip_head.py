"""SAM-CLIP's CLIP head: transformer blocks on the backbone's patch tokens, then an embedding MLP.

Pooled embedding (classification / distillation): blocks -> spatial max-pool -> LayerNorm -> MLP.
Per-patch embeddings (semantic segmentation): blocks -> LayerNorm -> MLP on every token.
The blocks have the backbone's block architecture and are initialised as copies of its last block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .configs import ImageEncoderConfig, _Config
from .image_encoder import Block


@dataclass(frozen=True)
class ClipHeadConfig(_Config):
    depth: int = 3
    mlp_hidden: int = 1024  # both hidden layers of the embedding MLP
    out_dim: int = 512  # the CLIP text-embedding dimension
    window_size: int = 0  # 0: global attention, like the last block of SAM's encoders
    # per-patch (dense) embeddings: the head's max-pool over a dense_pool x dense_pool window of tokens around
    # each patch (stride 1), then LayerNorm + MLP; 1 = each token alone. Not trained: an inference setting
    dense_pool: int = 1
    # the read that places the SAM-head refinement's prompts (semantic segmentation with both heads): the same
    # window max-pool over refine_pool x refine_pool tokens; 0 = dense_pool. Not trained: an inference setting
    refine_pool: int = 0

    def __post_init__(self) -> None:
        for name in ("mlp_hidden", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClipHeadConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.depth < 0:
            raise ValueError(f"ClipHeadConfig.depth must be >= 0, got {self.depth}")
        if self.dense_pool < 1 or self.dense_pool % 2 == 0:
            raise ValueError(f"dense_pool must be an odd number >= 1, got {self.dense_pool}")
        if self.refine_pool < 0 or (self.refine_pool and self.refine_pool % 2 == 0):
            raise ValueError(f"refine_pool must be 0 or an odd number >= 1, got {self.refine_pool}")


class ClipHead(nn.Module):
    """Backbone tokens BxGxGxD -> CLIP-space embeddings (pooled BxE or per-patch BxGxGxE)."""

    def __init__(self, cfg: ClipHeadConfig, backbone: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.blocks = nn.ModuleList(Block(backbone, cfg.window_size) for _ in range(cfg.depth))
        d = backbone.embed_dim
        self.norm = nn.LayerNorm(d, eps=backbone.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.mlp_hidden), nn.GELU(),
            nn.Linear(cfg.mlp_hidden, cfg.mlp_hidden), nn.GELU(),
            nn.Linear(cfg.mlp_hidden, cfg.out_dim),
        )

    def init_blocks_from(self, block: Block) -> None:
        """Copy ``block``'s weights into every head block (SAM-CLIP's initialisation)."""
        state = block.state_dict()
        for b in self.blocks:
            b.load_state_dict(state)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not get weight decay (the blocks' relative-position tables)."""
        return {n for n, _ in self.named_parameters() if "rel_pos" in n}

    def tokens(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """BxGxGxD backbone tokens -> BxGxGxD head tokens; ``key_mask`` (Bx(G*G) bool) limits what the
        head's attention sees."""
        for blk in self.blocks:
            x = blk(x, key_mask)
        return x

    def region_pooled(self, x: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Embeddings of image regions from one image's backbone tokens, as if each region were the image.

        Args:
            x: 1xGxGxD backbone tokens; regions: NxGxG bool token masks (each with at least one token).
        Returns:
            NxE (not normalised): per region, the head runs with attention restricted to the region's
            tokens, then its usual max-pool (over the region), LayerNorm and MLP.
        """
        if regions.ndim != 3 or regions.shape[1:] != x.shape[1:3]:
            raise ValueError(f"regions must be NxGxG with G = {tuple(x.shape[1:3])}, got {tuple(regions.shape)}")
        if not bool(regions.flatten(1).any(1).all()):
            raise ValueError("every region needs at least one token")  # before attention over no keys
        return self.masked_pooled(self.tokens(x.expand(len(regions), -1, -1, -1), key_mask=regions.flatten(1)),
                                  regions)

    def masked_pooled(self, head_tokens: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        """Embeddings of regions from the head's tokens: the pooled path with its max-pool limited to each
        region's tokens (the full-image attention is kept; cf. :meth:`region_pooled`).

        Args:
            head_tokens: NxGxGxD (row n belongs to region n); select: NxGxG bool, each with a token.
        Returns:
            NxE (not normalised).
        """
        flat = select.flatten(1)
        if not bool(flat.any(1).all()):
            raise ValueError("every region needs at least one token")
        pooled = head_tokens.flatten(1, 2).masked_fill(~flat[..., None], float("-inf")).amax(1)
        return self.mlp(self.norm(pooled))

    def pooled(self, head_tokens: torch.Tensor) -> torch.Tensor:
        """BxGxGxD -> BxE (not normalised)."""
        return self.mlp(self.norm(head_tokens.amax(dim=(1, 2))))

    def per_patch(self, head_tokens: torch.Tensor, pool: int | None = None) -> torch.Tensor:
        """BxGxGxD -> BxGxGxE (not normalised): for each patch, the pooled path (max-pool, LayerNorm, MLP)
        over the ``pool`` x ``pool`` window of tokens centred on it (cut at the grid's edge; default
        ``dense_pool``). A head trained only through max-pools over many tokens reads poorly from one token
        alone, and a small window reads like what it was trained on; a head trained with the merge's dense
        term (``dense_weight``) reads each token alone (``dense_pool = 1``)."""
        k = self.config.dense_pool if pool is None else pool
        if k > 1:
            # channels-last (the tokens' own BxGxGxD order): PyTorch's CPU max-pool is ~15x faster there than on
            # NCHW memory, which the head's attention output can be in
            x = F.max_pool2d(head_tokens.contiguous().permute(0, 3, 1, 2), k, stride=1, padding=k // 2)
            head_tokens = x.permute(0, 2, 3, 1)
        return self.mlp(self.norm(head_tokens))

    def forward(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = self.pooled(self.tokens(x))
        return F.normalize(out, dim=-1) if normalize else out
