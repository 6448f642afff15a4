"""Deterministic procedural scene world: RGB scenes with instance masks, semantic masks and captions.

Conventions
-----------
* ``Scene.image``: ``(H, W, 3)`` uint8 RGB, ``H == W == size``.
* ``Scene.instance_masks``: ``(N, H, W)`` bool, the *visible* part of each object after occlusion, in
  paint order (later objects are painted over earlier ones); masks are pairwise disjoint.
* ``Scene.semantic_mask``: ``(H, W)`` uint8 category ids, ``SHAPES[k]`` has id ``k + 1``, 0 = background.
* Boxes are XYXY in pixel units with exclusive right/bottom edges: a mask spanning columns ``a..b`` and
  rows ``c..d`` has ``bbox_xyxy == (a, c, b + 1, d + 1)``. Points are ``(x, y)`` pixel coordinates, the
  pixel ``(row i, col j)`` having its centre at ``(j + 0.5, i + 0.5)``.

Everything (layout, colours, background, caption) is drawn from ``numpy.random.default_rng(seed)`` in
normalised ``[0, 1]`` coordinates *before* rasterisation, so a seed gives the same scene at every
resolution; only the fine pixel noise is resolution specific (seeded from ``(seed, size)``). Occlusion
and the minimum visibility rules are checked at the reference resolution ``LAYOUT_SIZE`` (64 px).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from samclip.data.captions import make_caption
from samclip.data.shapes import MAX_ROTATION, SHAPES, TEXTURES, rasterize_shape, texture_pattern

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 160, 60),
    "blue": (30, 80, 215),
    "yellow": (245, 215, 30),
    "orange": (245, 135, 20),
    "purple": (130, 50, 180),
    "pink": (245, 120, 185),
    "cyan": (30, 200, 215),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
"""Object colour names (single lowercase words) -> nominal RGB. Backgrounds are kept muted."""

CATEGORY_IDS: dict[str, int] = {name: k + 1 for k, name in enumerate(SHAPES)}
NUM_CLASSES: int = len(SHAPES) + 1  # including background (id 0)

SPLIT_OFFSETS: dict[str, int] = {
    "train_teacher": 0,
    "train_merge": 10_000_000,
    "val": 20_000_000,
    "test": 30_000_000,
}
SPLIT_SIZE: int = 10_000_000

HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("blue", "heart"),
        ("green", "triangle"),
        ("yellow", "ring"),
        ("purple", "square"),
        ("orange", "hexagon"),
        ("cyan", "cross"),
        ("pink", "circle"),
    }
)
"""(colour, shape) pairs never shown to teachers: pass ``forbidden_pairs=HELDOUT_PAIRS`` when generating
teacher-training scenes and evaluate composition with :func:`composition_scene`."""

LAYOUT_SIZE = 64  # reference resolution for visibility checks and size words
MIN_VISIBLE_FRACTION = 0.35  # every object keeps at least this fraction of its own area visible ...
MIN_VISIBLE_PIXELS = 12  # ... and at least this many pixels at LAYOUT_SIZE
SMALL_AREA, LARGE_AREA = 0.028, 0.06  # nominal (unoccluded) area fraction thresholds for size words
DEFAULT_RADIUS_RANGE = (0.07, 0.22)
_TEXTURE_PROBS = np.array([0.4, 0.2, 0.2, 0.2])
_MAX_ATTEMPTS = 200
_STREAM_SINGLE, _STREAM_COMPOSITION = 1, 2


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene. Pixel quantities refer to the visible mask at the scene's resolution.

    ``bbox_xyxy``: XYXY pixel box of the visible mask (exclusive right/bottom edge). ``center``: (x, y)
    centroid of the visible mask. ``prompt_point``: (x, y) centre of the visible pixel nearest to the
    centroid (always inside the mask, also for rings and crescents). ``area_fraction``: visible pixels /
    image pixels. ``center_norm``/``radius_norm``/``angle``: the resolution-independent geometry.
    ``size_word`` ("small"/"medium"/"large") comes from the unoccluded area, so it is the same at all sizes.
    """

    category: str
    category_id: int
    colour: str
    texture: str
    size_word: str
    bbox_xyxy: tuple[float, float, float, float]
    center: tuple[float, float]
    area_fraction: float
    prompt_point: tuple[float, float]
    rgb: tuple[int, int, int]
    center_norm: tuple[float, float]
    radius_norm: float
    angle: float


@dataclass(eq=False)
class Scene:
    """A rendered scene; see the module docstring for array shapes and conventions."""

    image: np.ndarray
    instance_masks: np.ndarray
    semantic_mask: np.ndarray
    objects: list[SceneObject]
    caption: str
    seed: int
    background: str = "plain"
    pairs: list[tuple[str, str]] = field(init=False)

    def __post_init__(self) -> None:
        self.pairs = [(o.colour, o.category) for o in self.objects]

    @property
    def size(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True)
class _Constraint:
    colour: str | None = None
    shape: str | None = None
    not_colour: str | None = None
    not_shape: str | None = None


@dataclass(frozen=True)
class _Spec:
    shape: str
    colour: str
    texture: str
    rgb: tuple[int, int, int]
    cx: float
    cy: float
    radius: float
    angle: float


@dataclass(frozen=True)
class _Background:
    kind: str
    base: np.ndarray  # (3,) float32
    second: np.ndarray  # (3,) float32
    angle: float
    coarse: np.ndarray | None  # (g, g) float32 in [0, 1]
    blobs: np.ndarray  # (k, 6): cx, cy, rx, ry, angle, delta
    lines: np.ndarray  # (k, 6): x0, y0, x1, y1, half_width, delta
    noise: float


def split_seeds(split: str, n: int, start: int = 0) -> range:
    """``n`` seeds of ``split`` (``"train_teacher"``, ``"train_merge"``, ``"val"``, ``"test"``) beginning at
    ``start`` within the split; the splits occupy disjoint blocks of ``SPLIT_SIZE`` seeds."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_OFFSETS)}")
    if n < 0 or start < 0 or start + n > SPLIT_SIZE:
        raise ValueError(f"seeds [{start}, {start + n}) do not fit in a split of {SPLIT_SIZE}")
    base = SPLIT_OFFSETS[split] + start
    return range(base, base + n)


def _check_pairs(pairs: frozenset[tuple[str, str]]) -> None:
    for pair in pairs:
        if len(pair) != 2 or pair[0] not in COLOURS or pair[1] not in SHAPES:
            raise ValueError(f"pair {pair!r} is not a (colour, shape) tuple of known names")


def _muted(rng: np.random.Generator, lo: float = 0.32, hi: float = 0.68) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(0.0, 0.22), rng.uniform(lo, hi)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


def _sample_background(rng: np.random.Generator) -> _Background:
    kind = ("plain", "gradient", "noisy")[int(rng.integers(3))]
    base = _muted(rng)
    second = _muted(rng) if kind != "plain" else base
    angle = rng.uniform(0.0, 2.0 * math.pi)
    coarse = None
    if kind == "noisy":
        g = int(rng.integers(3, 9))
        coarse = rng.random((g, g)).astype(np.float32)
    n_blobs = n_lines = 0
    if rng.random() < 0.45:
        kind = "cluttered"
        n_blobs, n_lines = int(rng.integers(3, 14)), int(rng.integers(2, 10))
    blobs = np.column_stack(
        [
            rng.random((n_blobs, 2)),
            rng.uniform(0.01, 0.05, (n_blobs, 2)),
            rng.uniform(0.0, math.pi, n_blobs),
            rng.choice([-1.0, 1.0], n_blobs) * rng.uniform(8.0, 26.0, n_blobs),
        ]
    )
    starts = rng.random((n_lines, 2))
    length = rng.uniform(0.05, 0.3, n_lines)
    direction = rng.uniform(0.0, 2.0 * math.pi, n_lines)
    ends = starts + length[:, None] * np.column_stack([np.cos(direction), np.sin(direction)])
    lines = np.column_stack(
        [
            starts,
            ends,
            rng.uniform(0.002, 0.006, n_lines),
            rng.choice([-1.0, 1.0], n_lines) * rng.uniform(8.0, 26.0, n_lines),
        ]
    )
    return _Background(kind, base, second, angle, coarse, blobs, lines, float(rng.uniform(2.0, 9.0)))


def _interp_matrix(g: int, size: int) -> np.ndarray:
    """(size, g) bilinear weights from a g-cell grid (values at cell centres) to pixel centres."""
    pos = np.clip((np.arange(size) + 0.5) / size * g - 0.5, 0.0, g - 1.0)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, g - 1)
    w = (pos - i0).astype(np.float32)
    m = np.zeros((size, g), dtype=np.float32)
    rows = np.arange(size)
    m[rows, i0] += 1.0 - w
    m[rows, i1] += w
    return m


def _render_background(bg: _Background, size: int) -> np.ndarray:
    """Background as float32 (size, size, 3), without pixel noise."""
    if bg.coarse is not None:
        m = _interp_matrix(bg.coarse.shape[0], size)
        t = m @ bg.coarse @ m.T
    elif not np.array_equal(bg.base, bg.second):
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        t = coords[None, :] * math.cos(bg.angle) + coords[:, None] * math.sin(bg.angle)
        t = t * np.float32(1.0 / math.sqrt(2.0)) + np.float32(0.5)
    else:
        return np.broadcast_to(bg.base, (size, size, 3)).copy()
    return bg.base + t[:, :, None] * (bg.second - bg.base)


def _paint_clutter(img: np.ndarray, bg: _Background) -> None:
    size = img.shape[0]
    for cx, cy, rx, ry, ang, delta in bg.blobs:
        rad = max(rx, ry)
        ras = rasterize_shape("circle", cx, cy, rad, 0.0, size)
        if ras.mask.size == 0:
            continue
        c, s = math.cos(ang), math.sin(ang)
        a = (ras.u * c + ras.v * s) * (rad / rx)
        b = (ras.v * c - ras.u * s) * (rad / ry)
        img[ras.window][a * a + b * b <= 1.0] += np.float32(delta)
    for x0, y0, x1, y1, hw, delta in bg.lines:
        lo_x, hi_x = max(0, int((min(x0, x1) - hw) * size)), min(size, int((max(x0, x1) + hw) * size) + 1)
        lo_y, hi_y = max(0, int((min(y0, y1) - hw) * size)), min(size, int((max(y0, y1) + hw) * size) + 1)
        if hi_x <= lo_x or hi_y <= lo_y:
            continue
        px = (np.arange(lo_x, hi_x, dtype=np.float32) + 0.5) / size - np.float32(x0)
        py = (np.arange(lo_y, hi_y, dtype=np.float32) + 0.5) / size - np.float32(y0)
        dx, dy = x1 - x0, y1 - y0
        t = np.clip((px[None, :] * dx + py[:, None] * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        ex, ey = px[None, :] - t * dx, py[:, None] - t * dy
        width = max(hw, 0.6 / size)  # at least ~one pixel wide at every resolution
        img[lo_y:hi_y, lo_x:hi_x][ex * ex + ey * ey <= width * width] += np.float32(delta)


def _sample_spec(
    rng: np.random.Generator,
    constraint: _Constraint,
    forbidden: frozenset[tuple[str, str]],
    shapes: Sequence[str],
    radius_range: tuple[float, float],
) -> _Spec:
    colours = list(COLOURS)
    if constraint.shape is not None:
        shape = constraint.shape
    else:
        options = [
            s
            for s in shapes
            if s != constraint.not_shape
            and any((c, s) not in forbidden for c in ([constraint.colour] if constraint.colour else colours))
        ]
        if not options:
            raise ValueError("forbidden_pairs/constraints leave no shape to draw")
        shape = options[int(rng.integers(len(options)))]
    if constraint.colour is not None:
        colour = constraint.colour
    else:
        allowed = [c for c in colours if c != constraint.not_colour and (c, shape) not in forbidden]
        if not allowed:
            raise ValueError(f"forbidden_pairs leave no colour for shape {shape!r}")
        colour = allowed[int(rng.integers(len(allowed)))]
    texture = TEXTURES[int(rng.choice(len(TEXTURES), p=_TEXTURE_PROBS))]
    r, g, b = (int(x) for x in np.clip(np.array(COLOURS[colour]) + rng.integers(-12, 13, 3), 0, 255))
    lo, hi = radius_range
    radius = math.sqrt(rng.uniform(lo * lo, hi * hi))  # uniform in area
    cx, cy = rng.uniform(radius, 1.0 - radius, 2)
    angle = rng.uniform(-MAX_ROTATION[shape], MAX_ROTATION[shape])
    return _Spec(shape, colour, texture, (r, g, b), float(cx), float(cy), radius, float(angle))


def _full_mask(spec: _Spec, size: int) -> np.ndarray:
    ras = rasterize_shape(spec.shape, spec.cx, spec.cy, spec.radius, spec.angle, size)
    full = np.zeros((size, size), dtype=bool)
    full[ras.window] = ras.mask
    return full


def _sample_layout(
    rng: np.random.Generator,
    constraints: list[_Constraint],
    forbidden: frozenset[tuple[str, str]],
    shapes: Sequence[str],
    radius_range: tuple[float, float],
    n_required: int,
) -> tuple[list[_Spec], list[int], list[int], list[int]]:
    """Place objects one by one (paint order), resampling any object that would push an earlier one below
    the visibility rules at ``LAYOUT_SIZE``. Optional objects (index >= ``n_required``) that cannot be
    placed are dropped. Returns specs, their constraint slots, nominal pixel areas and visible pixel
    counts (both at ``LAYOUT_SIZE``)."""
    specs: list[_Spec] = []
    slots: list[int] = []
    areas: list[int] = []
    visible: list[np.ndarray] = []
    for k, constraint in enumerate(constraints):
        for attempt in range(_MAX_ATTEMPTS):
            lo, hi = radius_range
            hi = max(lo, hi * (1.0 - attempt / _MAX_ATTEMPTS))  # shrink when the canvas gets crowded
            spec = _sample_spec(rng, constraint, forbidden, shapes, (lo, hi))
            full = _full_mask(spec, LAYOUT_SIZE)
            count = int(full.sum())
            if count < MIN_VISIBLE_PIXELS:
                continue
            kept = [vis & ~full for vis in visible]
            if all(
                int(m.sum()) >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * a) for m, a in zip(kept, areas)
            ):
                specs.append(spec)
                slots.append(k)
                areas.append(count)
                visible = [*kept, full]
                break
        else:
            if k < n_required:
                raise RuntimeError(f"could not place required object {k} after {_MAX_ATTEMPTS} attempts")
    return specs, slots, areas, [int(v.sum()) for v in visible]


def _size_word(area_px: int) -> str:
    frac = area_px / LAYOUT_SIZE**2
    return "small" if frac < SMALL_AREA else "large" if frac > LARGE_AREA else "medium"


def _shade(rgb: tuple[int, int, int], texture: str) -> np.ndarray:
    """Accent colour of a pattern: a darker shade (lighter for black); milder for the 50% checkerboard."""
    c = np.array(rgb, dtype=np.float32)
    strength = 0.25 if texture == "checkered" else 0.38
    if c.max() < 80:
        return c + (255.0 - c) * strength
    return c * (1.0 - strength)


def _paint(specs: list[_Spec], size: int, image: np.ndarray | None) -> np.ndarray:
    """Paint objects in order into ``image`` (float32, may be None for masks only); returns the
    ``(size, size)`` int16 map of the topmost object index (-1 = background)."""
    idmap = np.full((size, size), -1, dtype=np.int16)
    for i, spec in enumerate(specs):
        ras = rasterize_shape(spec.shape, spec.cx, spec.cy, spec.radius, spec.angle, size)
        idmap[ras.window][ras.mask] = i
        if image is None:
            continue
        win = image[ras.window]
        win[ras.mask] = np.array(spec.rgb, dtype=np.float32)
        pattern = texture_pattern(spec.texture, ras.u, ras.v)
        if pattern is not None:
            win[ras.mask & pattern] = _shade(spec.rgb, spec.texture)
    return idmap


def _describe_objects(
    specs: list[_Spec], areas: list[int], idmap: np.ndarray, scale: float
) -> list[SceneObject]:
    size = idmap.shape[0]
    objects = []
    for i, spec in enumerate(specs):
        ras = rasterize_shape(spec.shape, spec.cx, spec.cy, spec.radius, spec.angle, size)
        ys, xs = np.nonzero(idmap[ras.window] == i)
        if len(xs) == 0:  # only possible at resolutions far below LAYOUT_SIZE
            bbox, center, point = (0.0, 0.0, 0.0, 0.0), (spec.cx * size, spec.cy * size), (0.0, 0.0)
        else:
            xs, ys = xs + ras.x0, ys + ras.y0
            bbox = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            mx, my = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
            j = int(np.argmin((xs + 0.5 - mx) ** 2 + (ys + 0.5 - my) ** 2))
            center, point = (mx, my), (float(xs[j]) + 0.5, float(ys[j]) + 0.5)
        objects.append(
            SceneObject(
                category=spec.shape,
                category_id=CATEGORY_IDS[spec.shape],
                colour=spec.colour,
                texture=spec.texture,
                size_word=_size_word(areas[i]),
                bbox_xyxy=bbox,
                center=center,
                area_fraction=len(xs) * scale,
                prompt_point=point,
                rgb=spec.rgb,
                center_norm=(spec.cx, spec.cy),
                radius_norm=spec.radius,
                angle=spec.angle,
            )
        )
    return objects


def _build(
    rng: np.random.Generator,
    seed: int,
    size: int,
    noise_key: Sequence[int],
    *,
    n_objects: int,
    n_required: int,
    forced: Sequence[_Constraint],
    forbidden_pairs: frozenset[tuple[str, str]],
    shapes: Sequence[str],
    radius_range: tuple[float, float],
    supersample: int,
) -> Scene:
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    if not 0.0 < radius_range[0] <= radius_range[1] <= 0.5:
        raise ValueError(f"radius_range must satisfy 0 < lo <= hi <= 0.5, got {radius_range}")
    _check_pairs(forbidden_pairs)
    bg = _sample_background(rng)
    constraints = [_Constraint()] * n_objects
    rank = {}  # constraint slot -> rank of the forced constraint placed there (paint order is random)
    if forced:
        for j, slot in enumerate(rng.choice(n_objects, size=len(forced), replace=False)):
            constraints[int(slot)] = forced[j]
            rank[int(slot)] = j
    specs, slots, areas, visible = _sample_layout(
        rng, constraints, forbidden_pairs, shapes, radius_range, n_required
    )

    # caption priority: forced objects first (in the given order), then by visible area at LAYOUT_SIZE
    order = sorted(range(len(specs)), key=lambda i: (rank.get(slots[i], len(forced)), -visible[i], i))

    big = size * supersample
    image = _render_background(bg, big)
    _paint_clutter(image, bg)
    idmap_big = _paint(specs, big, image)
    noise_rng = np.random.default_rng([*noise_key, size, supersample])
    noise = noise_rng.random((big, big, 1), dtype=np.float32) - np.float32(0.5)
    image += noise * np.float32(2.0 * bg.noise)
    if supersample > 1:
        image = image.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
        idmap = _paint(specs, size, None)
    else:
        idmap = idmap_big
    image_u8 = np.clip(image + 0.5, 0.0, 255.0).astype(np.uint8)

    n = len(specs)
    instance_masks = idmap[None, :, :] == np.arange(n, dtype=np.int16)[:, None, None]
    lut = np.array([0] + [CATEGORY_IDS[s.shape] for s in specs], dtype=np.uint8)
    semantic = lut[idmap.astype(np.int64) + 1]
    objects = _describe_objects(specs, areas, idmap, 1.0 / (size * size))
    caption = make_caption([objects[i] for i in order], rng, background=bg.kind)
    return Scene(
        image=image_u8,
        instance_masks=instance_masks,
        semantic_mask=semantic,
        objects=objects,
        caption=caption,
        seed=seed,
        background=bg.kind,
    )


def _shape_list(categories: Sequence[str] | None) -> tuple[str, ...]:
    shapes = tuple(SHAPES if categories is None else categories)
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        raise ValueError(f"unknown or empty categories {unknown or shapes!r}")
    return shapes


def generate_scene(
    seed: int,
    size: int = 256,
    *,
    min_objects: int = 1,
    max_objects: int = 6,
    forbidden_pairs: frozenset[tuple[str, str]] = frozenset(),
    categories: Sequence[str] | None = None,
    radius_range: tuple[float, float] = DEFAULT_RADIUS_RANGE,
    supersample: int = 1,
) -> Scene:
    """Generate the scene of ``seed`` rendered at ``size x size`` pixels.

    The number of objects is uniform in ``[min_objects, max_objects]``. Objects never use a (colour,
    shape) pair from ``forbidden_pairs`` (the colour is redrawn). ``categories`` restricts the shapes;
    ``radius_range`` bounds object radii as fractions of the image side. ``supersample > 1`` renders the
    image at ``size * supersample`` and box-downsamples it (anti-aliased edges; masks stay exact at
    ``size``). Same arguments give byte-identical arrays; the layout does not depend on ``size``.
    """
    if not 0 <= min_objects <= max_objects:
        raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(min_objects, max_objects + 1))
    return _build(
        rng, seed, size, (seed,),
        n_objects=n, n_required=min_objects, forced=(), forbidden_pairs=frozenset(forbidden_pairs),
        shapes=_shape_list(categories), radius_range=radius_range, supersample=supersample,
    )  # fmt: skip


def single_object_scene(
    seed: int,
    size: int = 128,
    category: str | None = None,
    *,
    forbidden_pairs: frozenset[tuple[str, str]] = frozenset(),
    radius_range: tuple[float, float] = (0.2, 0.4),
    supersample: int = 1,
) -> Scene:
    """A scene with exactly one (large-ish) object, of ``category`` when given, for zero-shot
    classification. Uses its own random stream, so it differs from ``generate_scene(seed)``."""
    rng = np.random.default_rng([seed, _STREAM_SINGLE])
    forced = (_Constraint(shape=category),) if category is not None else ()
    shapes = _shape_list(None if category is None else [category])
    return _build(
        rng, seed, size, (seed, _STREAM_SINGLE),
        n_objects=1, n_required=1, forced=forced, forbidden_pairs=frozenset(forbidden_pairs),
        shapes=shapes, radius_range=radius_range, supersample=supersample,
    )  # fmt: skip


def composition_scene(
    seed: int,
    size: int = 256,
    pair: tuple[str, str] = ("red", "star"),
    *,
    distractors: bool = True,
    max_extra: int = 2,
    supersample: int = 1,
) -> Scene:
    """A test scene containing exactly one object with the (colour, shape) ``pair`` (typically one of
    :data:`HELDOUT_PAIRS`). With ``distractors`` it also holds an object of the same colour but another
    shape and one of the same shape but another colour; plus 0..``max_extra`` random objects. The target
    object is always named in the caption; find it with ``scene.pairs.index(pair)``."""
    _check_pairs(frozenset({pair}))
    colour, shape = pair
    rng = np.random.default_rng([seed, _STREAM_COMPOSITION])
    forced = [_Constraint(colour=colour, shape=shape)]
    if distractors:
        forced += [_Constraint(colour=colour, not_shape=shape), _Constraint(shape=shape, not_colour=colour)]
    n = len(forced) + int(rng.integers(0, max_extra + 1))
    return _build(
        rng, seed, size, (seed, _STREAM_COMPOSITION),
        n_objects=n, n_required=n, forced=forced, forbidden_pairs=frozenset({pair}),
        shapes=SHAPES, radius_range=DEFAULT_RADIUS_RANGE, supersample=supersample,
    )  # fmt: skip
