"""Colours, palette label maps and PNG overlays of task results."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.grid import PALETTE

if TYPE_CHECKING:  # pragma: no cover
    pass



#: colour of a single prompted mask (``predict`` / ``label``)
MASK_COLOUR: tuple[int, int, int] = (30, 144, 255)


#: masks returned by everything mode at most (palette PNGs hold 255 ids)
MAX_INSTANCES = 255


def class_colour(k: int) -> tuple[int, int, int]:
    """Colour of legend id ``k >= 1`` (cycles through :data:`samclip.data.grid.PALETTE`)."""
    return PALETTE[(k - 1) % len(PALETTE)]


def hex_colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def _hex_to_rgb(h: str) -> tuple[int, int, int]:
    return int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)


def label_map_png(label_map: np.ndarray, colours: Sequence[Sequence[int]]) -> bytes:
    """HxW ids (0..255) -> palette PNG bytes; index 0 transparent, index k coloured ``colours[k - 1]``."""
    from PIL import Image

    lm = np.asarray(label_map)
    if lm.size and (lm.min() < 0 or lm.max() > 255):
        raise ValueError("label map ids must be in 0..255")
    im = Image.fromarray(lm.astype(np.uint8), mode="P")
    pal = [0, 0, 0]
    for c in colours[:255]:
        pal += [int(v) for v in c]
    im.putpalette(pal + [0, 0, 0] * (256 - len(pal) // 3))
    buf = io.BytesIO()
    im.save(buf, format="PNG", transparency=0, compress_level=3)
    return buf.getvalue()


def legend_entry(k: int, name: str, area: int, colour: Sequence[int] | None = None, **extra: Any) -> dict[str, Any]:
    """A legend row: ``id`` (the label map's index), ``name``, ``color`` hex (default: :func:`class_colour`),
    ``area`` in pixels, plus ``extra`` fields (e.g. ``score``)."""
    return {"id": k, "name": name, "color": hex_colour(colour or class_colour(k)), "area": int(area), **extra}


def paint_instances(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Instance id map (1-based in the given order); larger masks first so smaller ones stay visible."""
    out = np.zeros(shape, dtype=np.uint8)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for i in order[:MAX_INSTANCES]:
        out[masks[i]] = i + 1
    return out


@dataclass(eq=False)
class TaskResult:
    """One task's output: ``data`` (JSON-able), an optional HxW uint8 ``label_map`` (0 = nothing,
    ``k`` = ``legend`` entry with ``id == k``) and the ``legend`` (``id``, ``name``, ``color`` hex,
    ``area`` pixels). ``prompts`` echoes the validated prompts for drawing."""

    data: dict[str, Any]
    label_map: np.ndarray | None = None
    legend: list[dict[str, Any]] = field(default_factory=list)
    prompts: dict[str, Any] = field(default_factory=dict)

    def label_map_png(self) -> bytes | None:
        if self.label_map is None:
            return None
        colours = [_hex_to_rgb(e["color"]) for e in sorted(self.legend, key=lambda e: e["id"]) if e["id"] > 0]
        return label_map_png(self.label_map, colours)


#: image rows blended at a time by render_overlay (float32 copies of a stripe, not of the whole image)
_STRIPE_ROWS = 256


def _blend(image: np.ndarray, lm: np.ndarray, legend: list[dict[str, Any]], alpha: float) -> np.ndarray:
    """HxWx3 uint8 with each legend id's pixels of ``lm`` blended towards its colour (``alpha``) and its
    contour (pixels with an in-image 4-neighbour of another id) in the colour itself; id 0 and ids without a
    legend entry are left as they are. Row stripes at a time, one colour table for all ids."""
    colour = np.zeros((int(lm.max()) + 1 if lm.size else 1, 3), np.float32)
    drawn = np.zeros(len(colour), bool)
    for e in legend:
        if 0 < int(e["id"]) < len(colour):
            colour[int(e["id"])] = _hex_to_rgb(e["color"])
            drawn[int(e["id"])] = True
    out = image.copy()
    if not drawn.any():
        return out
    h = lm.shape[0]
    for y0 in range(0, h, _STRIPE_ROWS):
        y1 = min(h, y0 + _STRIPE_ROWS)
        a, b = max(0, y0 - 1), min(h, y1 + 1)  # one row of context above and below for the contours
        ids = lm[a:b]
        edge = np.zeros(ids.shape, bool)
        edge[1:] |= ids[1:] != ids[:-1]
        edge[:-1] |= ids[:-1] != ids[1:]
        edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
        edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
        ids, edge = ids[y0 - a : y0 - a + (y1 - y0)], edge[y0 - a : y0 - a + (y1 - y0)]
        m = drawn[ids]
        if not m.any():
            continue
        c = colour[ids[m]]
        px = image[y0:y1][m].astype(np.float32) * (1 - alpha) + c * alpha
        px = np.where(edge[m][:, None], c, px)
        out[y0:y1][m] = px.clip(0, 255).astype(np.uint8)
    return out


def render_overlay(image: np.ndarray, result: TaskResult, *, alpha: float = 0.55, title: str | None = None) -> bytes:
    """PNG bytes: ``image`` with the result's label map blended in (contours drawn), the prompts
    (green = foreground point, red = background point, yellow = box) and a text legend / title."""
    from PIL import Image, ImageDraw, ImageFont

    lm = result.label_map
    im = Image.fromarray(image if lm is None else _blend(image, lm, result.legend, alpha))
    draw = ImageDraw.Draw(im)
    r = max(2, round(max(im.size) / 100))
    for (x, y), lab in zip(result.prompts.get("points") or [], result.prompts.get("point_labels") or []):
        colour = (0, 220, 0) if lab == 1 else (230, 0, 0)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=(255, 255, 255))
    if result.prompts.get("box"):
        draw.rectangle(result.prompts["box"], outline=(255, 230, 0), width=max(1, r // 2))
    font = ImageFont.load_default()
    lines = [title] if title else []
    lines += [f"{e['name']} ({e['area']} px)" for e in result.legend if e["area"] > 0][:12]
    y = 2
    for line in lines:
        bb = draw.textbbox((4, y), line, font=font)
        draw.rectangle((bb[0] - 2, bb[1] - 1, bb[2] + 2, bb[3] + 1), fill=(0, 0, 0))
        draw.text((4, y), line, fill=(255, 255, 255), font=font)
        y = bb[3] + 3
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()

