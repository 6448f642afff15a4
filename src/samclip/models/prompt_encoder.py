"""SAM's prompt encoder: points, boxes and a dense mask into sparse and dense prompt embeddings.

Coordinates are pixels of the encoder's input frame (the resized, padded ``input_size`` square),
X first: points BxNx2, boxes Bx4 XYXY. Point labels: 1 foreground, 0 background, -1 padding.
Parameter names follow segment-anything (``pe_layer``, ``point_embeddings.{0..3}``, ``mask_downscaling``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier-feature positional encoding of (x, y) in [0, 1]."""

    def __init__(self, num_pos_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """...x2 coordinates in [0, 1] -> ...x(2*num_pos_feats)."""
        coords = 2 * coords - 1
        coords = coords.to(self.positional_encoding_gaussian_matrix.dtype)
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of an (H, W) grid of cell centres -> Cx H x W."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(
            [xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1
        )  # (H, W, 2) with x first
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """BxNx2 pixel coordinates (x, y) in an (H, W) frame -> BxNxC."""
        coords = coords.clone().float()
        coords[..., 0] = coords[..., 0] / image_size[1]
        coords[..., 1] = coords[..., 1] / image_size[0]
        return self._encode(coords)


class PromptEncoder(nn.Module):
    """Encodes geometric prompts for the mask decoder.

    Args:
        embed_dim: prompt embedding width (= image encoder ``out_chans``).
        image_embedding_size: (h, w) of the image embedding grid at the native input size.
        input_image_size: (H, W) of the padded encoder input at the native size (e.g. 1024x1024).
        mask_in_chans: hidden channels of the mask-downscaling convolutions.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe: torch.Tensor | None = None  # get_dense_pe's inference cache and what it was made from
        self._dense_pe_key: tuple | None = None

    def no_mask_embedding(self) -> torch.Tensor:
        """The dense prompt embedding of prompts without a mask input, 1xCx1x1 (broadcast over the grid)."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def get_dense_pe(self, size: tuple[int, int] | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Positional encoding of the image embedding grid -> 1xCxhxw (channels-last in memory, so that
        the decoder's token-major view of it is contiguous), computed in fp32 and returned in ``dtype`` (default
        the encoding matrix's). The same for every prompt: without autograd it is computed once per grid
        size and dtype and kept until the encoding matrix changes."""
        size = tuple(size or self.image_embedding_size)
        if torch.is_grad_enabled() or torch.jit.is_tracing():
            pe = self.pe_layer(size).unsqueeze(0)
            return pe if dtype is None else pe.to(dtype)
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        key = (size, dtype, matrix.device, matrix.data_ptr(), matrix._version)
        if self._dense_pe_key != key:
            # in fp32 whatever autocast the first caller runs under: the cached value must not depend on who asked
            # first (a bf16-autocast first call made it in bf16, and later decodes changed with the call order)
            with torch.autocast(matrix.device.type, enabled=False):
                pe = self.pe_layer(size)
            pe = pe.permute(1, 2, 0).contiguous().permute(2, 0, 1).unsqueeze(0)
            self._dense_pe = pe if dtype is None else pe.to(dtype)
            self._dense_pe_key = key
        return self._dense_pe

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        emb = torch.where(lab == -1, torch.zeros_like(emb), emb)
        emb = emb + (lab == -1) * self.not_a_point_embed.weight
        emb = emb + (lab == 0) * self.point_embeddings[0].weight
        emb = emb + (lab == 1) * self.point_embeddings[1].weight
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        emb[:, 0, :] = emb[:, 0, :] + self.point_embeddings[2].weight
        emb[:, 1, :] = emb[:, 1, :] + self.point_embeddings[3].weight
        return emb

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        grid_size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Args:
            points: (coords BxNx2, labels BxN) in input-frame pixels, or None.
            boxes: Bx4 XYXY in input-frame pixels, or None.
            masks: Bx1x(4h)x(4w) mask logits, or None.
            grid_size: (h, w) of the image embedding; defaults to the native grid.
        Returns:
            sparse BxTxC and dense BxCxhxw embeddings.
        """
        h, w = grid_size or self.image_embedding_size
        bs = _batch_size(points, boxes, masks)
        device = self.no_mask_embed.weight.device
        sparse = torch.empty(bs, 0, self.embed_dim, device=device)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embedding().expand(bs, -1, h, w)
        return sparse, dense


def _batch_size(points, boxes, masks) -> int:  # noqa: ANN001
    if points is not None:
        return points[0].shape[0]
    if boxes is not None:
        return boxes.shape[0]
    if masks is not None:
        return masks.shape[0]
    return 1
