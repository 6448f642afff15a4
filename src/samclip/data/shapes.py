"""Shape and fill-pattern rasterisation for the procedural scene world.

Every shape lives in a *local* frame ``(u, v)`` measured in units of the object's radius: the whole
shape fits inside the unit disk ``u**2 + v**2 <= 1``, ``u`` points right and ``v`` points down
(image convention) before rotation. A placed object is ``(cx, cy, radius, angle)`` in normalised image
coordinates (``[0, 1]`` for both axes, origin top-left), so the same placement can be rasterised at
any resolution. Pixel ``(row i, col j)`` of a ``size x size`` image has its centre at
``((j + 0.5) / size, (i + 0.5) / size)``; a pixel belongs to a shape when its centre does (no
anti-aliasing). Rasterisation only touches the object's bounding window and is fully vectorised.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "ring",
    "cross",
    "heart",
    "crescent",
    "arrow",
    "ellipse",
    "pentagon",
)
"""Shape categories in fixed order; the category id of ``SHAPES[k]`` is ``k + 1`` (0 = background)."""

TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
"""Fill patterns. Non-solid ones paint an accent shade of the object colour on < 50% of the pixels."""

InsideFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _regular_polygon(n: int, start: float = -math.pi / 2, radius: float = 1.0) -> np.ndarray:
    k = np.arange(n)
    ang = start + 2.0 * math.pi * k / n
    return np.stack([radius * np.cos(ang), radius * np.sin(ang)], axis=1)


def _star_polygon(points: int = 5, inner: float = 0.42) -> np.ndarray:
    k = np.arange(2 * points)
    ang = -math.pi / 2 + math.pi * k / points
    rad = np.where(k % 2 == 0, 1.0, inner)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)


def _polygon(vertices: np.ndarray | list[tuple[float, float]]) -> InsideFn:
    """Even-odd (crossing number) point-in-polygon test, one vectorised pass per edge."""
    vert = np.asarray(vertices, dtype=np.float64)
    edges = []
    for (x1, y1), (x2, y2) in zip(vert, np.roll(vert, -1, axis=0)):
        if y1 != y2:
            edges.append((float(x1), float(y1), float(y2), float((x2 - x1) / (y2 - y1))))

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        res = np.zeros(u.shape, dtype=bool)
        for x1, y1, y2, slope in edges:
            crosses = (v < y1) != (v < y2)
            res ^= crosses & (u < x1 + (v - y1) * slope)
        return res

    return inside


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7)


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.55**2)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 (y up), rescaled and shifted into the unit disk.
    x = u * 1.25
    y = 0.25 - v * 1.25
    x2 = x * x
    q = x2 + y * y - 1.0
    return q * q * q - x2 * y * y * y <= 0.0


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    du = u - 0.42
    return (u * u + v * v <= 1.0) & (du * du + v * v > 0.78**2)


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + (v * v) * (1.0 / 0.55**2) <= 1.0


_ARROW = [
    (-0.95, -0.22), (0.15, -0.22), (0.15, -0.58), (0.95, 0.0), (0.15, 0.58), (0.15, 0.22), (-0.95, 0.22),
]  # fmt: skip

SHAPE_FUNCTIONS: dict[str, InsideFn] = {
    "circle": _circle,
    "square": _square,
    "triangle": _polygon(_regular_polygon(3)),
    "star": _polygon(_star_polygon()),
    "hexagon": _polygon(_regular_polygon(6, start=0.0)),
    "ring": _ring,
    "cross": _cross,
    "heart": _heart,
    "crescent": _crescent,
    "arrow": _polygon(_ARROW),
    "ellipse": _ellipse,
    "pentagon": _polygon(_regular_polygon(5)),
}
"""``inside(u, v) -> bool array`` for every shape, in local radius units (shape fits the unit disk)."""

MAX_ROTATION: dict[str, float] = {name: math.pi for name in SHAPES} | {"heart": 0.5}
"""Rotation is drawn uniformly from ``[-MAX_ROTATION, MAX_ROTATION]`` radians (hearts stay upright-ish)."""


@dataclass(frozen=True)
class ShapeRaster:
    """One shape rasterised inside its (image-clipped) bounding window.

    ``mask``, ``u`` and ``v`` all have shape ``(h, w)``; the window covers image rows ``y0:y0+h`` and
    columns ``x0:x0+w``. ``u``/``v`` are float32 local coordinates (radius units, rotated with the
    object), used to lay fill patterns out in the object's own frame.
    """

    y0: int
    x0: int
    mask: np.ndarray
    u: np.ndarray
    v: np.ndarray

    @property
    def window(self) -> tuple[slice, slice]:
        h, w = self.mask.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)


def _pixel_range(centre: float, radius: float, size: int) -> tuple[int, int]:
    # pixels j whose centre (j + 0.5) / size lies within [centre - radius, centre + radius]
    lo = max(0, math.ceil((centre - radius) * size - 0.5))
    hi = min(size, math.floor((centre + radius) * size - 0.5) + 1)
    return lo, max(lo, hi)


def rasterize_shape(shape: str, cx: float, cy: float, radius: float, angle: float, size: int) -> ShapeRaster:
    """Rasterise ``shape`` centred at normalised ``(cx, cy)`` with normalised ``radius`` and rotation
    ``angle`` (radians, clockwise on screen) into a ``size x size`` pixel grid (window only)."""
    inside = SHAPE_FUNCTIONS[shape]
    x0, x1 = _pixel_range(cx, radius, size)
    y0, y1 = _pixel_range(cy, radius, size)
    inv = np.float32(1.0 / (size * radius))
    dx = ((np.arange(x0, x1, dtype=np.float32) + np.float32(0.5)) - np.float32(cx * size)) * inv
    dy = ((np.arange(y0, y1, dtype=np.float32) + np.float32(0.5)) - np.float32(cy * size)) * inv
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u = dx[None, :] * c + dy[:, None] * s
    v = dy[:, None] * c - dx[None, :] * s
    return ShapeRaster(y0=y0, x0=x0, mask=inside(u, v), u=u, v=v)


def texture_pattern(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Boolean accent-pattern for ``texture`` in local coordinates (``None`` for ``"solid"``).

    Periods are in radius units, so patterns scale and rotate with the object: about four stripes,
    a grid of dots, or a checkerboard across the object's diameter.
    """
    if texture == "solid":
        return None
    if texture == "striped":
        return np.mod(v * np.float32(1.0 / 0.5) + np.float32(0.2), 1.0) < 0.4
    if texture == "dotted":
        period = np.float32(1.0 / 0.5)
        fu = np.mod(u * period + np.float32(0.5), 1.0) - np.float32(0.5)
        fv = np.mod(v * period + np.float32(0.5), 1.0) - np.float32(0.5)
        return fu * fu + fv * fv < np.float32(0.28**2)
    if texture == "checkered":
        cells = np.floor(u * np.float32(1.0 / 0.45)) + np.floor(v * np.float32(1.0 / 0.45))
        return np.mod(cells, 2.0) == 0.0
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
