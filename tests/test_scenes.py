"""Tests for the procedural scene world (samclip.data)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from samclip.data import (
    CATEGORY_IDS,
    COLOURS,
    HELDOUT_PAIRS,
    SHAPES,
    TEXTURES,
    Scene,
    class_prompt_templates,
    class_prompts,
    composition_scene,
    generate_scene,
    single_object_scene,
    split_seeds,
    write_grid,
)
from samclip.data.captions import NUMBER_WORDS, plural
from samclip.data.scenes import LAYOUT_SIZE, MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS
from samclip.data.shapes import rasterize_shape

_NUMBERS = {w: i for i, w in enumerate(NUMBER_WORDS)}
_SHAPE_WORDS = {s: s for s in SHAPES} | {plural(s): s for s in SHAPES}
_SIZE_WORDS = {"small", "medium", "large"}


def parse_caption(caption: str) -> tuple[list[tuple[int, str, str, list[str]]], int]:
    """(count, colour, shape, adjectives) per named phrase, and the number of summarised "other" shapes."""
    tokens = re.findall(r"[a-z]+", caption)
    mentions: list[tuple[int, str, str, list[str]]] = []
    count, colour, adjectives = 1, None, []
    for tok in tokens:
        if tok in ("a", "an", "shapes", "objects", "shape"):
            count, colour, adjectives = 1, None, []
        elif tok in _NUMBERS:
            count = _NUMBERS[tok]
        elif tok in COLOURS:
            assert colour is None, f"two colours in one phrase: {caption!r}"
            colour = tok
        elif tok in _SIZE_WORDS or tok in TEXTURES:
            adjectives.append(tok)
        elif tok in _SHAPE_WORDS:
            assert colour is not None, f"shape {tok!r} named without a colour: {caption!r}"
            mentions.append((count, colour, _SHAPE_WORDS[tok], adjectives))
            count, colour, adjectives = 1, None, []
    rest = 0
    if "other" in tokens:
        rest = _NUMBERS[tokens[tokens.index("other") - 1]]
    return mentions, rest


def check_caption(scene: Scene) -> None:
    mentions, rest = parse_caption(scene.caption)
    pair_counts = Counter(scene.pairs)
    named = Counter()
    for count, colour, shape, adjectives in mentions:
        candidates = [o for o in scene.objects if (o.colour, o.category) == (colour, shape)]
        assert len(candidates) >= count, scene.caption
        for adj in adjectives:
            attr = "size_word" if adj in _SIZE_WORDS else "texture"
            assert any(getattr(o, attr) == adj for o in candidates), (adj, scene.caption)
        named[(colour, shape)] += count
    for pair, count in named.items():
        assert count <= pair_counts[pair], scene.caption
    assert sum(named.values()) + rest == len(scene.objects), scene.caption
    if rest == 0:
        assert named == pair_counts, scene.caption


def check_scene(scene: Scene, size: int) -> None:
    n = len(scene.objects)
    assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
    assert scene.instance_masks.shape == (n, size, size) and scene.instance_masks.dtype == bool
    assert scene.semantic_mask.shape == (size, size) and scene.semantic_mask.dtype == np.uint8
    assert scene.instance_masks.sum(axis=0).max(initial=0) <= 1, "instance masks overlap"
    expected = np.zeros((size, size), dtype=np.uint8)
    for obj, mask in zip(scene.objects, scene.instance_masks):
        assert obj.category_id == CATEGORY_IDS[obj.category] == SHAPES.index(obj.category) + 1
        assert obj.colour in COLOURS and obj.texture in TEXTURES
        assert mask.any()
        expected[mask] = obj.category_id
        ys, xs = np.nonzero(mask)
        assert obj.bbox_xyxy == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert obj.area_fraction == pytest.approx(mask.mean())
        px, py = obj.prompt_point
        assert mask[int(py), int(px)], "prompt point outside its mask"
    np.testing.assert_array_equal(scene.semantic_mask, expected)
    check_caption(scene)


def test_vocabulary() -> None:
    assert SHAPES[:12] == (
        "circle", "square", "triangle", "star", "hexagon", "ring",
        "cross", "heart", "crescent", "arrow", "ellipse", "pentagon",
    )  # fmt: skip
    assert len(COLOURS) >= 8 and all(re.fullmatch(r"[a-z]+", c) for c in COLOURS)
    assert {"solid", "striped", "dotted"} <= set(TEXTURES)
    assert len(HELDOUT_PAIRS) >= 8
    assert len({s for _, s in HELDOUT_PAIRS}) == len({c for c, _ in HELDOUT_PAIRS}) == len(HELDOUT_PAIRS)


def test_shapes_fit_unit_disk_and_differ() -> None:
    masks = {}
    for shape in SHAPES:
        ras = rasterize_shape(shape, 0.5, 0.5, 0.4, 0.0, 128)
        assert ras.mask.mean() > 0.2, shape
        assert (ras.u[ras.mask] ** 2 + ras.v[ras.mask] ** 2).max() <= 1.0 + 1e-5, shape
        full = np.zeros((128, 128), dtype=bool)
        full[ras.window] = ras.mask
        masks[shape] = full
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.9, (a, b, iou)


def test_determinism() -> None:
    a, b = generate_scene(123, 128), generate_scene(123, 128)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.instance_masks.tobytes() == b.instance_masks.tobytes()
    assert a.semantic_mask.tobytes() == b.semantic_mask.tobytes()
    assert a.caption == b.caption and a.objects == b.objects
    c = generate_scene(124, 128)
    assert a.image.tobytes() != c.image.tobytes()


def test_resolution_independence() -> None:
    for seed in range(8):
        small, big = generate_scene(seed, 64), generate_scene(seed, 256)
        assert small.caption == big.caption and small.background == big.background
        assert [(o.category, o.colour, o.texture, o.size_word) for o in small.objects] == [
            (o.category, o.colour, o.texture, o.size_word) for o in big.objects
        ]
        assert (big.semantic_mask[1::4, 1::4] == small.semantic_mask).mean() > 0.97
        for s, b in zip(small.objects, big.objects):
            np.testing.assert_allclose(np.array(b.bbox_xyxy) / 4, s.bbox_xyxy, atol=1.5)


def test_supersample_keeps_masks() -> None:
    plain, smooth = generate_scene(5, 96), generate_scene(5, 96, supersample=2)
    np.testing.assert_array_equal(plain.instance_masks, smooth.instance_masks)
    assert plain.caption == smooth.caption
    assert np.abs(plain.image.astype(int) - smooth.image.astype(int)).mean() < 12


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**40),
    lo=st.integers(0, 3),
    extra=st.integers(0, 4),
    size=st.sampled_from([64, 80, 128]),
)
def test_scene_invariants(seed: int, lo: int, extra: int, size: int) -> None:
    scene = generate_scene(seed, size, min_objects=lo, max_objects=lo + extra)
    assert lo <= len(scene.objects) <= lo + extra
    check_scene(scene, size)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**40))
def test_visibility_rules_at_layout_size(seed: int) -> None:
    scene = generate_scene(seed, LAYOUT_SIZE)
    for obj, mask in zip(scene.objects, scene.instance_masks):
        full = rasterize_shape(obj.category, *obj.center_norm, obj.radius_norm, obj.angle, LAYOUT_SIZE)
        visible = int(mask.sum())
        assert visible >= MIN_VISIBLE_PIXELS
        assert visible >= MIN_VISIBLE_FRACTION * int(full.mask.sum())


def test_forbidden_pairs_never_generated() -> None:
    for seed in range(250):
        scene = generate_scene(seed, 64, forbidden_pairs=HELDOUT_PAIRS)
        assert not set(scene.pairs) & HELDOUT_PAIRS
    # almost everything forbidden for circles: the colour must be resampled to the one left
    only_red = frozenset((c, "circle") for c in COLOURS if c != "red")
    for seed in range(40):
        scene = generate_scene(seed, 64, forbidden_pairs=only_red, categories=["circle", "ring"])
        assert all(c == "red" for c, s in scene.pairs if s == "circle")


def test_bad_pairs_rejected() -> None:
    with pytest.raises(ValueError):
        generate_scene(0, 64, forbidden_pairs=frozenset({("star", "red")}))


@pytest.mark.parametrize("pair", sorted(HELDOUT_PAIRS))
def test_composition_scene(pair: tuple[str, str]) -> None:
    for seed in range(3):
        scene = composition_scene(seed, 64, pair)
        check_scene(scene, 64)
        assert scene.pairs.count(pair) == 1
        colour, shape = pair
        assert any(c == colour and s != shape for c, s in scene.pairs)
        assert any(c != colour and s == shape for c, s in scene.pairs)
        mentions, _ = parse_caption(scene.caption)
        assert any((c, s) == pair for _, c, s, _ in mentions), scene.caption


def test_single_object_scene() -> None:
    for seed in range(10):
        scene = single_object_scene(seed, 64)
        assert len(scene.objects) == 1
        check_scene(scene, 64)
    for shape in SHAPES:
        scene = single_object_scene(7, 64, category=shape)
        assert scene.pairs[0][1] == shape and scene.objects[0].area_fraction > 0.02


def test_splits_disjoint() -> None:
    ranges = {name: set(split_seeds(name, 1000)) for name in ("train_teacher", "train_merge", "val", "test")}
    names = list(ranges)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not ranges[a] & ranges[b]
    assert split_seeds("val", 5, start=10)[0] == split_seeds("val", 20)[10]
    with pytest.raises(ValueError):
        split_seeds("nope", 3)


def test_prompt_templates() -> None:
    templates = class_prompt_templates()
    assert len(templates) >= 8 and all(t.count("{}") == 1 for t in templates)
    prompts = class_prompts("ellipse")
    assert "a photo of an ellipse" in prompts and not any("a ellipse" in p for p in prompts)


def test_write_grid(tmp_path: Path) -> None:
    scenes = [generate_scene(s, 64) for s in range(3)]
    preds = [
        scenes[0].instance_masks,
        [scenes[1].semantic_mask, scenes[1].instance_masks.astype(np.float32)],
        None,
    ]
    out = write_grid(scenes, tmp_path / "sub" / "grid.png", predictions=preds, ncols=2)
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 2 * 192 and img.height > 192
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]
