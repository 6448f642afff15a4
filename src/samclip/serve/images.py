"""Image input and PNG output of the task layer: decoding with a decompression-bomb guard, PNG bytes."""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    pass


#: default decompression-bomb guard: images with more pixels are refused before decoding
DEFAULT_MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes are not a readable image (unknown format, truncated or corrupt): HTTP 400."""


class ImageTooLarge(ValueError):
    """The image header declares more pixels than allowed (decompression-bomb guard): HTTP 413."""


def _open(source: bytes | str | Path, max_pixels: int) -> Any:
    from PIL import Image

    name = "the upload" if isinstance(source, bytes | bytearray) else str(source)
    if isinstance(source, bytes | bytearray) and not source:
        raise ImageDecodeError("the upload is empty (0 bytes)")
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > 2 * Image.MAX_IMAGE_PIXELS:
        # Pillow refuses images over twice its own guard before we see their size: a larger limit asked of us
        # raises that guard to match (process-wide, never lowered)
        Image.MAX_IMAGE_PIXELS = -(-max_pixels // 2)
    try:
        with warnings.catch_warnings():  # we enforce our own limit below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{name}: image too large: more than the limit of {max_pixels} pixels") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not an image (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"{name}: not a readable image ({err})") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise ImageDecodeError(f"{name}: the image is empty ({w}x{h})")
    if w * h > max_pixels:
        im.close()
        raise ImageTooLarge(f"{name}: image too large: {w}x{h} = {w * h} pixels > the limit of {max_pixels}")
    return im


def probe_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header only (no decoding); ImageDecodeError / ImageTooLarge otherwise.

    The size is the stored one; :func:`read_image` applies the EXIF orientation, which may swap it
    (``probe_image`` does too when the header carries an orientation tag)."""
    im = _open(path, max_pixels)
    try:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block is not fatal here
        orientation = 1
    finally:
        im.close()
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def read_image(source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file or bytes -> HxWx3 uint8 RGB, EXIF orientation applied (as browsers show it).

    The pixel count is checked from the header BEFORE decoding (:class:`ImageTooLarge`); unreadable,
    truncated or corrupt data raises :class:`ImageDecodeError`, so do 32-bit float or integer images (their value
    range is unknown). 16-bit images keep their high byte; alpha is dropped; animations give their first frame.
    """
    from PIL import Image, ImageOps

    from ..inference.image_input import PixelFormatError, pil_to_rgb_uint8

    im = _open(source, max_pixels)
    name = "the upload" if isinstance(source, bytes | bytearray) else str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
            return pil_to_rgb_uint8(ImageOps.exif_transpose(im))
    except PixelFormatError as err:
        raise ImageDecodeError(f"{name}: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({err})") from None


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

