"""What the predictor caches per image: the backbone pass and the decoder's view of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..models.mask_decoder import FirstLayerImage


@dataclass(eq=False)
class DecoderInputs:
    """The image side of prompt decodes in one dtype: ``embeddings``, the image embeddings cast to it (None
    where they already are in it), and ``first_layer``, the mask decoder's first-layer view of them
    (:meth:`Sam.decoder_image_cache`, made at the first decode without a mask input)."""

    embeddings: torch.Tensor | None = None
    first_layer: FirstLayerImage | None = None
    onnx_first_layer: tuple[np.ndarray, ...] | None = None  # the same, from an ONNX export's decoder_image_cache


@dataclass(eq=False)
class ImageState:
    """Everything cached from one backbone pass over one image.

    ``sam_embeddings`` 1xCxGxG (SAM head input); ``tokens`` 1xGxGxD backbone tokens (None for a plain
    SAM); CLIP-head outputs are filled in lazily on first use and reused afterwards. ``image`` is the
    validated HxWx3 uint8 input, kept for passes at another size (``classify(size=...)``) or of the mirrored
    image (test-time augmentation), cached in ``other_sizes`` by (frame, mirrored).
    """

    image: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    frame: int
    sam_embeddings: torch.Tensor
    tokens: torch.Tensor | None
    head_tokens: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    patch_embeddings: torch.Tensor | None = None
    refine_embeddings: torch.Tensor | None = None  # per-patch read at the head's refine_pool, when it differs
    decoder: dict[torch.dtype, DecoderInputs] = field(default_factory=dict)  # per decode dtype, on first decode
    other_sizes: dict[tuple[int, bool], ImageState] = field(default_factory=dict)
    #: composed tasks' per-image work reused by later calls (``segment_text``'s everything-mode candidates)
    tasks: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    @property
    def grid(self) -> int:
        return self.sam_embeddings.shape[-1]

