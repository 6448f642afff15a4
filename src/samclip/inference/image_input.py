"""Image input for the predictor: validation, conversion, SAM's resize, and coordinate mapping.

Conventions
-----------
- Images are HxWx3 uint8 RGB ("original image", size ``(H, W)``).
- The model sees the image resized so its longest side is the frame size ``S`` (segment-anything's
  ``ResizeLongestSide``: ``new = int(old * S / max(H, W) + 0.5)``, at least 1 px per side), placed at
  the top-left of an ``SxS`` frame and padded bottom/right. ``input_size = (h, w)`` is that resized size.
- Coordinates are (x, y) pixels, X first; boxes are XYXY. Mapping original -> frame scales x by
  ``w / W`` and y by ``h / H`` (segment-anything's ``apply_coords``); the prompt encoder then adds 0.5
  for the pixel centre.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def to_rgb_uint8(image: Any) -> np.ndarray:
    """Validate an image and return it as a C-contiguous HxWx3 uint8 RGB array.

    Accepted:
      - numpy arrays (or torch tensors) HxW (grayscale, replicated to RGB), HxWx1, HxWx3 (RGB) and
        HxWx4 (RGBA; the alpha channel is dropped, colours are NOT composited over a background);
      - dtype uint8, or uint16 which is scaled to uint8 by keeping the high byte (``x >> 8``,
        i.e. the full 16-bit range 0..65535 maps to 0..255; 12-bit data stored in uint16 comes out dark);
      - PIL images (palette / bilevel / CMYK / YCbCr / LA modes are converted to RGB, 16-bit modes follow
        the uint16 rule).
    Rejected with ``ValueError``: float arrays (convert to uint8 first), bool and other integer dtypes,
    empty images, channel-first or otherwise unsupported shapes.
    """
    arr = _as_array(image)
    if arr.dtype == np.bool_:
        raise ValueError("boolean arrays are not images; expected an HxWx3 uint8 RGB image")
    if np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"expected an HxWx3 uint8 RGB image, got {arr.dtype}; convert float images in [0, 1] with "
            "(image * 255).round().astype(np.uint8)"
        )
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image (uint16 is also accepted), got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"expected an HxW or HxWxC image, got an array of shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"the image is empty (shape {arr.shape})")
    channels = arr.shape[2]
    if channels == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif channels == 4:
        arr = arr[..., :3]
    elif channels != 3:
        hint = " (channel-first? pass HxWxC)" if arr.shape[0] in (1, 3, 4) else ""
        raise ValueError(f"expected 1, 3 or 4 channels in the last axis, got shape {arr.shape}{hint}")
    return np.ascontiguousarray(arr)


class PixelFormatError(ValueError):
    """A decoded image whose pixels have no known value range (32-bit float or integer)."""


def pil_to_rgb_uint8(im: Any) -> np.ndarray:  # noqa: ANN401 - a PIL image
    """A decoded PIL image -> HxWx3 uint8 RGB. 16-bit images keep their high byte (``convert("RGB")`` would
    saturate them white); 32-bit float / integer images raise :class:`PixelFormatError` (``convert`` would clip
    their values to 0..255, black or white images)."""
    if im.mode.startswith("I;16"):
        return to_rgb_uint8(np.asarray(im))
    if im.mode in ("F", "I"):
        raise PixelFormatError(f"32-bit {'float' if im.mode == 'F' else 'integer'} pixels are not supported; save "
                               "the image with 8- or 16-bit channels")
    return to_rgb_uint8(im.convert("RGB"))


def _as_array(image: Any) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None  # noqa: N806
    if Image is not None and isinstance(image, Image.Image):
        try:
            if image.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LA", "HSV", "LAB"):
                image = image.convert("RGB")
            return np.asarray(image)
        except (OSError, SyntaxError, ValueError) as err:  # decoded lazily: truncated or corrupt files fail here
            raise ValueError(f"cannot decode the PIL image ({err})") from None
    if isinstance(image, str | bytes | bytearray | os.PathLike):
        raise ValueError(f"expected an image (HxWx3 uint8 array or PIL image), got {type(image).__name__}; "
                         "read files with samclip.serve.read_image(path_or_bytes)")
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype.byteorder == ">":  # big-endian 16-bit data from some readers
            image = image.astype(image.dtype.newbyteorder("="))
        return image
    try:
        arr = np.asarray(image)
    except Exception as err:  # noqa: BLE001 - report any conversion failure as a bad input
        raise ValueError(f"cannot read an image from {type(image).__name__}") from err
    if arr.dtype == object:
        raise ValueError(f"cannot read an image from {type(image).__name__}")
    return arr


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) after resizing the longest side to ``long_side`` (each side at least 1 px)."""
    scale = long_side / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> size[0] x size[1] x 3 uint8 (PIL bilinear, antialiased when shrinking, as SAM)."""
    if image.shape[:2] == tuple(size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def original_to_frame(coords: torch.Tensor, original_size: tuple[int, int],
                      input_size: tuple[int, int]) -> torch.Tensor:
    """...x2 (x, y) original-image pixels -> input-frame pixels (x * w / W, y * h / H)."""
    scale = coords.new_tensor([input_size[1] / original_size[1], input_size[0] / original_size[0]])
    return coords * scale


def frame_to_original(coords: torch.Tensor, original_size: tuple[int, int],
                      input_size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`original_to_frame`."""
    scale = coords.new_tensor([original_size[1] / input_size[1], original_size[0] / input_size[0]])
    return coords * scale


def clip_points(coords: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
    """Clip ...x2 (x, y) pixel coordinates into the image: x in [0, W-1], y in [0, H-1]."""
    h, w = original_size
    return torch.stack([coords[..., 0].clamp(0, w - 1), coords[..., 1].clamp(0, h - 1)], dim=-1)


def mask_to_grid_weights(masks: torch.Tensor, input_size: tuple[int, int], patch: int, grid: int,
                         chunk: int = 16) -> torch.Tensor:
    """Area of each mask inside each backbone patch: NxHxW bool (original pixels) -> NxGxG float.

    Every original pixel is assigned to the patch its centre falls in after the resize into the frame
    (pixel centre ``(x + 0.5) * w / W`` in frame pixels, patch index ``floor(. / patch)``). Weights are
    pixel counts, so ``weights / weights.sum()`` is an area-weighted average over the mask. Masks are taken
    ``chunk`` at a time, fewer on large images.
    """
    n, height, width = masks.shape
    dev = masks.device
    chunk = max(1, min(chunk, (1 << 24) // max(1, height * width)))  # float copies of ~16M pixels at a time (64 MB)
    rows = ((torch.arange(height, device=dev) + 0.5) * (input_size[0] / height) / patch).long().clamp(max=grid - 1)
    cols = ((torch.arange(width, device=dev) + 0.5) * (input_size[1] / width) / patch).long().clamp(max=grid - 1)
    out = torch.zeros(n, grid, grid, device=dev)
    for start in range(0, n, chunk):
        m = masks[start : start + chunk].float()
        per_col = torch.zeros(m.shape[0], height, grid, device=dev).index_add_(2, cols, m)
        out[start : start + chunk] = torch.zeros(m.shape[0], grid, grid, device=dev).index_add_(1, rows, per_col)
    return out


#: the token rule of mask labelling (Predictor.label_masks, pooling "max" / "region") and of the merge's region
#: distillation: patches a mask covers at least this share of ...
REGION_MIN_COVER = 0.5
#: ... grown by this many rings of neighbouring patches (the object's outline)
REGION_CONTEXT = 1


def covered_tokens(cover: torch.Tensor, min_cover: float, context: int = 0,
                   valid: tuple[int, int] | None = None) -> torch.Tensor:
    """NxGxG per-patch mask cover (any unit) and a threshold in that unit -> NxGxG bool: the patches
    covered at least ``min_cover``, or each mask's most covered patch when none is (so a small mask
    still has a token), grown by ``context`` rings of neighbouring patches (a (2c+1)x(2c+1) dilation:
    tokens just outside an object see its outline, which is where a shape is told apart). ``valid``:
    (rows, cols) of the grid that overlap the image (:func:`valid_grid`); the ring never reaches the
    padding beyond them."""
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    select = cover >= min_cover
    none = ~select.flatten(1).any(1)
    select[none] = cover[none] == cover[none].flatten(1).amax(1)[:, None, None]
    if context:
        select = F.max_pool2d(select[:, None].float(), 2 * context + 1, 1, context)[:, 0] > 0
        if valid is not None:
            select[:, valid[0]:, :] = False
            select[:, :, valid[1]:] = False
    return select


def valid_grid(input_size: tuple[int, int], patch: int) -> tuple[int, int]:
    """Token rows / columns that overlap the image (the rest cover only padding)."""
    return math.ceil(input_size[0] / patch), math.ceil(input_size[1] / patch)
