"""SAM's ViT-Det image encoder, runnable at any multiple of its patch size.

Parameter names follow the segment-anything release (``patch_embed.proj``, ``pos_embed``,
``blocks.N.attn.qkv``, ``blocks.N.attn.rel_pos_h``, ``neck.0`` ...), so its checkpoints need no
renaming. Multi-resolution: at an input of ``S`` pixels the token grid is ``S / patch_size``; the
absolute position embedding is resized bicubically and the global blocks' relative-position tables
linearly to that grid. At the native size both are used untouched, so outputs equal the original's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .configs import ImageEncoderConfig
from .layers import LayerNorm2d


class PatchEmbed(nn.Module):
    """BxCxHxW image -> BxH'xW'xD tokens with a strided convolution."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MLPBlock(nn.Module):
    """Linear -> GELU -> Linear (``lin1`` / ``lin2`` as in segment-anything)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample a (L, C) relative-position table to (length, C); identity when L == length."""
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.T.unsqueeze(0), size=length, mode="linear")
    return resized[0].T


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) index pair along one axis.

    Args:
        q_size, k_size: query / key lengths along the axis.
        rel_pos: (L, C) learned table; resampled when ``L != 2 * max(q_size, k_size) - 1``.
    Returns:
        (q_size, k_size, C)
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    table = resize_rel_pos(rel_pos, max_rel_dist)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    rel = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return table[rel.long()]


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """MViTv2 decomposed relative-position attention bias.

    Args:
        q: (B, H*W, C) un-scaled queries of one head group.
        size: (H, W) token grid (queries and keys share it).
    Returns:
        (B, H*W, H*W) additive attention bias.
    """
    h, w = size
    rh = relative_position_table(h, h, rel_pos_h).to(q.dtype)
    rw = relative_position_table(w, w, rel_pos_w).to(q.dtype)
    b, _, c = q.shape
    r_q = q.reshape(b, h, w, c)
    bias_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh).contiguous()  # (B, H, W, Hk)
    bias_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw).contiguous()  # (B, H, W, Wk)
    # contiguous inputs keep the broadcast sum contiguous, so the reshape below is a view
    bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
    return bias.view(b, h * w, h * w)


class Attention(nn.Module):
    """Multi-head self-attention on a token grid with optional decomposed relative positions."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, use_rel_pos: bool, rel_pos_size: int | None
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if rel_pos_size is None:
                raise ValueError("rel_pos_size is required when use_rel_pos is set")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, self.head_dim))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, H, W, D) -> (B, H, W, D). ``key_mask`` (B, H*W) bool: only True tokens are attended to
        (every row needs at least one True)."""
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, hd)
        bias = None
        if self.use_rel_pos:
            flat_q = q.reshape(b * self.num_heads, h * w, self.head_dim)
            bias = decomposed_rel_pos_bias(flat_q, self.rel_pos_h, self.rel_pos_w, (h, w))
            bias = bias.reshape(b, self.num_heads, h * w, h * w)
        if key_mask is not None:
            blocked = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~key_mask, float("-inf"))
            blocked = blocked[:, None, None, :]
            bias = blocked if bias is None else bias + blocked
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(out)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, window, window, C) after zero-padding H, W to multiples of ``window``."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, dropping the padding."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous() if (hp > h or wp > w) else x


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size > 0`` means windowed attention, 0 means global."""

    def __init__(self, cfg: ImageEncoderConfig, window_size: int) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        rel_size = window_size if window_size > 0 else cfg.grid_size
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.use_rel_pos, rel_size)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = MLPBlock(dim, int(dim * cfg.mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, H, W, D) -> (B, H, W, D). ``key_mask`` (B, H*W) bool restricts global attention to the
        True tokens (windowed blocks do not take one)."""
        shortcut = x
        x = self.norm1(x)
        if key_mask is not None and self.window_size > 0:
            raise ValueError("key_mask needs a global-attention block (window_size = 0)")
        if key_mask is not None:
            x = self.attn(x, key_mask)
        elif self.window_size > 0:
            size = (x.shape[1], x.shape[2])
            x, padded = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


def resize_abs_pos(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a (1, h, w, C) position embedding to (1, H, W, C); identity at the same size."""
    if pos_embed.shape[1:3] == grid:
        return pos_embed
    resized = F.interpolate(
        pos_embed.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic", align_corners=False
    )
    return resized.to(pos_embed.dtype).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM image encoder.

    ``forward`` maps a normalised, padded image batch Bx3xSxS (S a multiple of ``patch_size``) to
    neck features Bx``out_chans``x(S/p)x(S/p). ``forward_features`` returns the transformer tokens
    BxGxGx``embed_dim`` before the neck (what the merged model's CLIP head consumes).
    """

    def __init__(self, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if cfg.use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid_size, cfg.grid_size, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(cfg, 0 if i in cfg.global_attn_indexes else cfg.window_size) for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not get weight decay (position tables)."""
        return {n for n, _ in self.named_parameters() if "pos" in n}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS -> BxGxGxD patch tokens plus (resized) absolute positions."""
        p = self.config.patch_size
        if x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of the patch size {p}")
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + resize_abs_pos(self.pos_embed, (x.shape[1], x.shape[2]))
        return x

    def forward_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        for blk in self.blocks[start:end]:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS -> BxGxGxD tokens after the last block (G = S / patch_size)."""
        return self.forward_blocks(self.embed(x))

    def forward_neck(self, tokens: torch.Tensor) -> torch.Tensor:
        """BxGxGxD tokens -> BxCxGxG neck features."""
        return self.neck(tokens.permute(0, 3, 1, 2))

    def forward_intermediates(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """Tokens (BxGxGxD) after each block listed in ``indices``."""
        x = self.embed(x)
        wanted, out = set(indices), []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in wanted:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_neck(self.forward_features(x))
