"""CLIP's ModifiedResNet image tower (OpenAI RN50 / RN101 / RN50x4 ... layout).

Differences from a torchvision ResNet, as in OpenAI CLIP: a 3-convolution stem with average pooling
instead of max pooling; strided blocks downsample with an average pool before the 3x3 -> 1x1 path
(anti-aliased); the head is an attention pool (a single query = the mean token, attending over the
spatial tokens with learned positions) instead of global average pooling. Total stride 32.

Key names match OpenAI's checkpoints under ``visual.`` (``conv1``, ``bn1`` ... ``layer1.0.conv1``,
``layer1.0.downsample.0`` (conv), ``downsample.1`` (BN), ``attnpool.{q,k,v,c}_proj``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .configs import VisionTowerConfig


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avg-pool when strided) -> 1x1 (4x channels), residual with an avg-pool shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            # OpenAI names the pool "-1" so the conv / BN keep the indices 0 / 1 of torchvision's layout
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """BxCxHxW -> BxE: one query (the mean token) attends over [mean; spatial tokens] + positions.

    ``positional_embedding`` is (1 + S*S)xC for the native grid S; other grids get bicubically resized
    spatial positions (as open_clip does for RN models at other resolutions).
    """

    def __init__(self, grid: int, dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, dim) / dim**0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out_dim)

    def _positions(self, h: int, w: int) -> torch.Tensor:
        pos = self.positional_embedding
        if (h, w) == (self.grid, self.grid):
            return pos
        spatial = pos[1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2).float()
        spatial = F.interpolate(spatial, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], spatial.to(pos.dtype).permute(0, 2, 3, 1).reshape(h * w, -1)], dim=0)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """BxCxHxW -> Bx(1+HW)xC: [mean token; spatial tokens] with positions added."""
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        return x + self._positions(h, w).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        b, n, c = t.shape
        d = c // self.heads
        q = self.q_proj(t[:, :1]).view(b, 1, self.heads, d).transpose(1, 2)
        k = self.k_proj(t).view(b, n, self.heads, d).transpose(1, 2)
        v = self.v_proj(t).view(b, n, self.heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c)
        return self.c_proj(out)


class ModifiedResNet(nn.Module):
    """CLIP ResNet image tower: Bx3xHxW normalised images -> BxE (``embed_dim``).

    ``cfg.layers`` is the tuple of blocks per stage, ``cfg.width`` the stem width (stage widths are
    width, 2x, 4x, 8x; output channels 32 x width), ``cfg.heads`` the attention-pool heads.
    ``cfg.patch_size`` is unused (the total stride is 32). H and W must be multiples of 32.
    """

    def __init__(self, cfg: VisionTowerConfig, embed_dim: int) -> None:
        super().__init__()
        if not isinstance(cfg.layers, tuple) or len(cfg.layers) != 4:
            raise ValueError(f"a CLIP ResNet needs 4 stage depths, got layers={cfg.layers!r}")
        self.config = cfg
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w // 2)
        self.conv2 = nn.Conv2d(w // 2, w // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w // 2)
        self.conv3 = nn.Conv2d(w // 2, w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = w
        stages = []
        for i, depth in enumerate(cfg.layers):
            planes = w * 2**i
            blocks = [Bottleneck(inplanes, planes, stride=1 if i == 0 else 2)]
            inplanes = planes * Bottleneck.expansion
            blocks += [Bottleneck(inplanes, planes) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d(cfg.image_size // 32, w * 32, cfg.heads, embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.attnpool.c_proj.in_features**-0.5
        for lin in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(lin.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)  # each residual branch starts as identity

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW -> Bx(32*width)x(H/32)x(W/32) features before the attention pool."""
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"CLIP ResNet input sides must be multiples of 32, got {tuple(x.shape[-2:])}")
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attnpool(self.feature_map(x))
