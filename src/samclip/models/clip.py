"""CLIP: a ViT image tower and a causal text transformer projected into one embedding space.

Parameter names follow the OpenAI / open_clip layout (``visual.conv1``, ``visual.class_embedding``,
``transformer.resblocks.N.attn.in_proj_weight``, ``text_projection``, ``logit_scale`` ...), so those
checkpoints need no renaming. Attention runs through ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .clip_resnet import ModifiedResNet
from .configs import ClipConfig, TextTowerConfig, VisionTowerConfig
from .layers import make_activation


class MultiheadSelfAttention(nn.Module):
    """Self-attention with a packed input projection (``in_proj_weight``: 3DxD) and ``out_proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """x: BxNxD -> BxNxD."""
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, act: str, eps: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.ln_1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MultiheadSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(dim, hidden))
        self.mlp.add_module("gelu", make_activation(act))
        self.mlp.add_module("c_proj", nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act: str, eps: float) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, act, eps) for _ in range(layers)
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for blk in self.resblocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, causal, use_reentrant=False)
            else:
                x = blk(x, causal)
        return x


class VisionTransformer(nn.Module):
    """CLIP image tower: Bx3xSxS normalised images -> BxE embeddings (not normalised).

    Runs at other sizes than ``image_size`` (multiples of ``patch_size``) by bicubically resizing the
    patch position embeddings.
    """

    def __init__(self, cfg: VisionTowerConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = cfg
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        scale = w**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid_size**2 + 1, w))
        self.ln_pre = nn.LayerNorm(w, eps=cfg.layer_norm_eps)
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.layer_norm_eps)
        self.ln_post = nn.LayerNorm(w, eps=cfg.layer_norm_eps)
        self.proj = nn.Parameter(scale * torch.randn(w, embed_dim))

    def _positions(self, grid: tuple[int, int]) -> torch.Tensor:
        pos = self.positional_embedding
        g = self.config.grid_size
        if grid == (g, g):
            return pos
        patch_pos = pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
        patch_pos = patch_pos.to(pos.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
        return torch.cat([pos[:1], patch_pos], dim=0)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW -> Bx(1+N)xW tokens after the transformer (before ``ln_post``)."""
        x = self.conv1(x)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self._positions(grid).to(x.dtype)
        return self.transformer(self.ln_pre(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_post(self.forward_tokens(x)[:, 0]) @ self.proj


class TextTransformer(nn.Module):
    """CLIP text tower: BxL token ids -> BxE embeddings taken at the first end-of-text token."""

    def __init__(self, cfg: TextTowerConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, cfg.width))
        self.transformer = Transformer(
            cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.layer_norm_eps
        )
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.text_projection = nn.Parameter(cfg.width**-0.5 * torch.randn(cfg.width, embed_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        x = self.ln_final(self.transformer(x, causal=True))
        is_eot = tokens == self.config.eot_token_id
        # first EOT; sequences without one (truncated input) use their last position
        idx = torch.where(is_eot.any(1), is_eot.int().argmax(1), torch.full_like(tokens[:, 0], n - 1))
        return x[torch.arange(x.shape[0], device=x.device), idx] @ self.text_projection


class CLIP(nn.Module):
    """Image and text towers plus the learned temperature. Built from a :class:`ClipConfig`.

    Our key layout is OpenAI's with the text tower's keys under ``text.``; the converters in
    ``samclip.convert`` add or strip that prefix.
    """

    def __init__(self, config: ClipConfig, visual: nn.Module, text: TextTransformer) -> None:
        super().__init__()
        self.config = config
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, config: ClipConfig) -> CLIP:
        tower = ModifiedResNet if config.vision.is_resnet else VisionTransformer
        return cls(config, tower(config.vision, config.embed_dim), TextTransformer(config.text, config.embed_dim))

    def normalize_images(self, images: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW RGB in [0, 1] -> normalised tower input."""
        return (images - self.image_mean) / self.image_std

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Bx3xHxW normalised images -> BxE."""
        x = self.visual(pixel_values)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """BxL token ids -> BxE."""
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, pixel_values: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits_per_image BxT, logits_per_text TxB)."""
        img = self.encode_image(pixel_values, normalize=True)
        txt = self.encode_text(tokens, normalize=True)
        logits = self.logit_scale.exp() * img @ txt.T
        return logits, logits.T
