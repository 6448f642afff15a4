"""PNG contact sheets of scenes for visual inspection.

Each tile shows the scene image, optionally the ground-truth instance masks as coloured overlays with
contours, optionally one or more predicted mask stacks side by side, and the wrapped caption below.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from samclip.data.scenes import Scene

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)  # fmt: skip
"""Overlay colours, cycled by instance index."""

_MIN_PANEL = 192
_GAP = 4
_PAD = 6

MaskInput = np.ndarray | Sequence[np.ndarray] | None


def _as_stack(masks: np.ndarray) -> np.ndarray:
    """(K, H, W) bool from a bool/float stack (floats thresholded at 0.5) or an (H, W) integer label map."""
    masks = np.asarray(masks)
    if masks.ndim == 2:
        if masks.dtype == bool:
            return masks[None]
        labels = [v for v in np.unique(masks) if v > 0]
        return np.stack([masks == v for v in labels]) if labels else np.zeros((0, *masks.shape), dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"expected (K, H, W) masks or an (H, W) label map, got shape {masks.shape}")
    return masks if masks.dtype == bool else masks > 0.5


def _resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    h, w = masks.shape[1:]
    rows = (np.arange(size) * h) // size
    cols = (np.arange(size) * w) // size
    return masks[:, rows][:, :, cols]


def _contour(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def overlay_masks(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Blend a (K, H, W) bool stack onto an (H, W, 3) uint8 RGB image, with one-pixel contours."""
    out = image.astype(np.float32)
    for k, mask in enumerate(masks):
        colour = np.array(PALETTE[k % len(PALETTE)], dtype=np.float32)
        out[mask] = out[mask] * 0.45 + colour * 0.55
        out[_contour(mask)] = colour
    return out.astype(np.uint8)


def _wrap(text: str, draw: ImageDraw.ImageDraw, font: Any, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and draw.textlength(trial, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return [*lines, current] if current else lines


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Any) -> None:
    x, y = xy
    box = draw.textbbox((x + 3, y + 2), text, font=font)
    draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
    draw.text((x + 3, y + 2), text, fill=(255, 255, 255), font=font)


def _panels(scene: Scene, overlay: bool, preds: MaskInput, size: int) -> list[tuple[str, np.ndarray]]:
    idx = (np.arange(size) * scene.size) // size
    image = scene.image[idx][:, idx]
    panels = [("image", image)]
    if overlay:
        panels.append(("ground truth", overlay_masks(image, _resize_masks(scene.instance_masks, size))))
    if preds is not None:
        stacks = [preds] if isinstance(preds, np.ndarray) else list(preds)
        for j, stack in enumerate(stacks):
            name = "prediction" if len(stacks) == 1 else f"prediction {j + 1}"
            panels.append((name, overlay_masks(image, _resize_masks(_as_stack(stack), size))))
    return panels


def write_grid(
    scenes: Sequence[Scene],
    path: str | os.PathLike[str],
    *,
    overlay: bool = True,
    predictions: Sequence[MaskInput] | None = None,
    ncols: int = 4,
) -> Path:
    """Write a PNG grid of ``scenes`` (``ncols`` tiles per row) to ``path`` atomically; returns the path.

    ``predictions``, when given, is aligned with ``scenes``: per scene ``None``, one mask stack, or a list
    of stacks (several models) shown side by side. A stack is (K, H, W) bool, (K, H, W) float
    probabilities (thresholded at 0.5) or an (H, W) integer label map (0 = background); any resolution.
    """
    if not scenes:
        raise ValueError("write_grid needs at least one scene")
    if predictions is not None and len(predictions) != len(scenes):
        raise ValueError(f"{len(predictions)} predictions for {len(scenes)} scenes")
    size = max(_MIN_PANEL, max(s.size for s in scenes))
    font = ImageFont.load_default(size=12)
    all_panels = [
        _panels(s, overlay, None if predictions is None else predictions[i], size)
        for i, s in enumerate(scenes)
    ]
    n_panels = max(len(p) for p in all_panels)
    tile_w = n_panels * size + (n_panels - 1) * _GAP
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [
        _wrap(f"#{s.seed} [{s.background}, {len(s.objects)} obj] {s.caption}", measure, font, tile_w)
        for s in scenes
    ]
    line_h = int(math.ceil(font.size * 1.3)) if hasattr(font, "size") else 14
    tile_h = size + _PAD + line_h * max(len(t) for t in texts)
    ncols = max(1, min(ncols, len(scenes)))
    nrows = math.ceil(len(scenes) / ncols)
    sheet = Image.new("RGB", (ncols * (tile_w + 2 * _PAD), nrows * (tile_h + 2 * _PAD)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (panels, lines) in enumerate(zip(all_panels, texts)):
        x0 = (i % ncols) * (tile_w + 2 * _PAD) + _PAD
        y0 = (i // ncols) * (tile_h + 2 * _PAD) + _PAD
        for j, (name, panel) in enumerate(panels):
            px = x0 + j * (size + _GAP)
            sheet.paste(Image.fromarray(panel), (px, y0))
            _label(draw, (px, y0), name, font)
        for k, line in enumerate(lines):
            draw.text((x0, y0 + size + _PAD // 2 + k * line_h), line, fill=(0, 0, 0), font=font)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            sheet.save(handle, format="PNG")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
