"""Learning / forgetting curves as a PNG, drawn with Pillow (no plotting dependency)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

from ..checkpoint import atomic_write_bytes

_COLOURS = {"zero_shot_top1": (31, 119, 180), "box_miou": (214, 39, 40), "point_miou": (44, 160, 44)}


def draw_curves(history: list[dict], path: Path, size: tuple[int, int] = (720, 420)) -> Path:
    """Plot each metric of ``history`` rows (``step`` on x, percent on y); stage boundaries dashed."""
    w, h = size
    left, right, top, bottom = 50, 170, 20, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    steps = [r["step"] for r in history]
    x0, x1 = min(steps + [0]), max(steps + [1])
    values = [r[k] for r in history for k in _COLOURS if k in r]
    y0, y1 = (min(values + [100.0]) // 10) * 10, 100.0

    def xy(step: float, v: float) -> tuple[float, float]:
        return (left + (step - x0) / max(1, x1 - x0) * (w - left - right),
                h - bottom - (v - y0) / max(1e-6, y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for v in range(int(y0), 101, 10):
        _, y = xy(x0, v)
        d.line([left - 4, y, left, y], fill="black")
        d.text((5, y - 6), f"{v:3d}", fill="black")
    d.text((left, h - bottom + 8), f"step {x0}", fill="black")
    d.text((w - right - 60, h - bottom + 8), f"step {x1}", fill="black")
    prev_stage = None
    for r in history:
        if prev_stage is not None and r["stage"] != prev_stage:
            x, _ = xy(r["step"], y0)
            for yy in range(top, h - bottom, 8):
                d.line([x, yy, x, yy + 4], fill=(150, 150, 150))
            d.text((x + 3, top + 2), f"stage {r['stage']}", fill=(120, 120, 120))
        prev_stage = r["stage"]
    for i, (key, colour) in enumerate(_COLOURS.items()):
        pts = [xy(r["step"], r[key]) for r in history if key in r]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for p in pts:
            d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
        d.line([w - right + 10, top + 10 + 18 * i, w - right + 30, top + 10 + 18 * i], fill=colour, width=3)
        d.text((w - right + 35, top + 4 + 18 * i), key, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path
