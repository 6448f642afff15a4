"""The Segment Anything Model: image encoder + prompt encoder + mask decoder, composed from a config.

Conventions: images are HWC uint8 RGB; SAM resizes the longest side to the encoder's input size
``S`` and pads bottom/right to SxS ("the input frame"). Prompt coordinates given to :meth:`Sam.decode`
are pixels of the input frame at the size the embedding was computed for; the predictor converts
from original-image pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configs import SamConfig
from .image_encoder import ImageEncoderViT
from .mask_decoder import FirstLayerImage, MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """SAM composed by constructor injection; build one from a config with :meth:`from_config`."""

    def __init__(
        self,
        config: SamConfig,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
    ) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, config: SamConfig) -> Sam:
        enc = config.image_encoder
        grid = (enc.grid_size, enc.grid_size)
        return cls(
            config,
            ImageEncoderViT(enc),
            PromptEncoder(config.prompt_embed_dim, grid, (enc.img_size, enc.img_size), config.mask_in_chans),
            MaskDecoder(config.prompt_embed_dim, config.mask_decoder),
        )

    @property
    def img_size(self) -> int:
        """Native input frame size (pixels per side)."""
        return self.config.image_encoder.img_size

    @property
    def mask_threshold(self) -> float:
        return self.config.mask_threshold

    def preprocess(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Normalise a Bx3xhxw batch in 0-255 RGB (already resized so max(h, w) <= size) and pad to SxS."""
        size = size or self.img_size
        x = (images.float() - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        if h > size or w > size:
            raise ValueError(f"image {h}x{w} is larger than the input frame {size}; resize it first")
        return F.pad(x, (0, size - w, 0, size - h))

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS normalised, padded images -> BxCx(S/p)x(S/p) image embeddings."""
        return self.image_encoder(pixel_values)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        image_cache: FirstLayerImage | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt decode on cached embeddings.

        Args:
            image_embeddings: BxCxhxw; the N prompts below are split evenly over the B images.
            point_coords: NxKx2 (x, y) pixels of the input frame the embedding was computed for
                (frame side = h * patch_size), with point_labels NxK (1 fg, 0 bg, -1 pad).
            boxes: Nx4 XYXY in the same frame.
            mask_input: Nx1x4hx4w low-resolution mask logits (e.g. a previous prediction).
            image_cache: :meth:`decoder_image_cache` of these image embeddings (optional; used for prompts
                without ``mask_input``): the decoder's first layer starts from it.
        Returns:
            low-resolution mask logits Nx(3|1)x4hx4w and IoU predictions Nx(3|1).
        """
        grid = (image_embeddings.shape[-2], image_embeddings.shape[-1])
        frame = grid[0] * self.config.image_encoder.patch_size
        scale = self.img_size / frame  # the prompt encoder normalises by the native frame
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels are required with point_coords")
            points = (point_coords * scale, point_labels)
        if boxes is not None:
            boxes = boxes * scale
        sparse, dense = self.prompt_encoder(points, boxes, mask_input, grid_size=grid)
        return self.mask_decoder(
            image_embeddings,
            self.prompt_encoder.get_dense_pe(grid, image_embeddings.dtype),
            sparse.to(self.mask_decoder.iou_token.weight.dtype),  # prompt tokens in the decoder's precision
            _broadcast_cast(dense, image_embeddings.dtype),
            multimask_output,
            image_cache if mask_input is None else None,
        )

    def decoder_image_cache(self, image_embeddings: torch.Tensor) -> FirstLayerImage:
        """BxCxhxw image embeddings -> what the mask decoder's first layer needs of them for prompts without a
        mask input (no-mask dense embedding), computed once: pass it to :meth:`decode` as ``image_cache``
        for every later prompt on these images."""
        grid = (image_embeddings.shape[-2], image_embeddings.shape[-1])
        dt = image_embeddings.dtype
        no_mask = self.prompt_encoder.no_mask_embedding().to(dt)
        return self.mask_decoder.project_image(image_embeddings, self.prompt_encoder.get_dense_pe(grid, dt), no_mask)

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-res logits Nx Kx4hx4w -> logits at the original image size NxKxHxW.

        ``input_size`` is the (h, w) of the resized image inside the padded frame.
        """
        low = masks.shape[-1]
        frame = low * self.config.image_encoder.patch_size // 4
        if frame % low:
            masks = F.interpolate(masks.float(), (frame, frame), mode="bilinear", align_corners=False)
        else:
            # only the low-res rows the crop below reads: output row y samples source row (y + 0.5) / s - 0.5
            # and the row after it, so rows y < h need source rows <= that + 1; the same scale (s = frame /
            # low) gives the same values as the full upsampling, bit for bit (also cropping the columns
            # would not: the kernel's vector tails round differently, by up to 1 ulp)
            scale = frame // low
            rows = min(low, int((input_size[0] - 0.5) / scale - 0.5) + 2)
            masks = F.interpolate(masks[..., :rows, :].float(), scale_factor=scale, mode="bilinear",
                                  align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        if tuple(original_size) == tuple(masks.shape[-2:]):
            return masks  # a bilinear resize to the same size is the identity
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)

    def forward(
        self,
        pixel_values: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch and decode prompts; see :meth:`decode` for shapes."""
        emb = self.image_embeddings(pixel_values)
        return self.decode(emb, point_coords, point_labels, boxes, mask_input, multimask_output)


def _broadcast_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in ``dtype``; a broadcast view (zero strides, e.g. the no-mask embedding expanded over the prompts
    and the grid) is cast before broadcasting instead of being materialised at full size."""
    if x.dtype == dtype:
        return x
    base = x[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in x.stride())]
    return base.to(dtype).expand(x.shape)
