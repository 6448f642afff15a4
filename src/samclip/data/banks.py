"""Pre-rendered banks of scene-world samples as compact arrays, built in parallel worker processes.

A bank holds N samples of one split at one resolution:
- ``images``: NxSxSx3 uint8 RGB;
- ``instance_maps``: NxSxS uint8, 0 = background, i+1 = instance i (instances are disjoint);
- ``semantic``: NxSxS uint8 category ids (0 = background);
- ``captions``: N strings; ``objects``: per sample, a list of (category, colour, texture) tuples.

Training reads random rows of a bank instead of rendering on the fly, which keeps the 2 cores busy
with the model. ``kind`` selects the generator: ``scene`` (1-6 objects), ``single`` (one object).
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass

import numpy as np

from .scenes import Scene, generate_scene, single_object_scene, split_seeds


@dataclass
class SceneBank:
    images: np.ndarray
    instance_maps: np.ndarray
    semantic: np.ndarray
    captions: list[str]
    objects: list[list[tuple[str, str, str]]]
    seeds: np.ndarray

    def __len__(self) -> int:
        return len(self.captions)

    @staticmethod
    def concat(banks: list[SceneBank]) -> SceneBank:
        return SceneBank(
            np.concatenate([b.images for b in banks]),
            np.concatenate([b.instance_maps for b in banks]),
            np.concatenate([b.semantic for b in banks]),
            [c for b in banks for c in b.captions],
            [o for b in banks for o in b.objects],
            np.concatenate([b.seeds for b in banks]),
        )


def _render(args: tuple[str, int, int, frozenset]) -> tuple:
    kind, seed, size, forbidden = args
    if kind == "scene":
        s: Scene = generate_scene(seed, size, forbidden_pairs=forbidden)
    elif kind == "single":
        s = single_object_scene(seed, size, forbidden_pairs=forbidden)
    else:
        raise ValueError(f"unknown bank kind {kind!r}")
    inst = np.zeros((size, size), np.uint8)
    for i, m in enumerate(s.instance_masks):
        inst[m] = i + 1
    objs = [(o.category, o.colour, o.texture) for o in s.objects]
    return s.image, inst, s.semantic_mask, s.caption, objs


def build_bank(split: str, n: int, size: int, *, kind: str = "scene", start: int = 0,
               forbidden_pairs: frozenset[tuple[str, str]] = frozenset(), workers: int = 2,
               progress: bool = False) -> SceneBank:
    """Render ``n`` samples of ``split`` (seeds ``split_seeds(split, n, start)``) at ``size`` px."""
    seeds = list(split_seeds(split, n, start))
    jobs = [(kind, s, size, forbidden_pairs) for s in seeds]
    if workers > 1 and n >= 64:
        ctx = mp.get_context("fork")
        with ctx.Pool(workers) as pool:
            rows = list(_progress(pool.imap(_render, jobs, chunksize=32), n, progress, f"render {kind}"))
    else:
        rows = list(_progress(map(_render, jobs), n, progress, f"render {kind}"))
    return SceneBank(
        np.stack([r[0] for r in rows]),
        np.stack([r[1] for r in rows]),
        np.stack([r[2] for r in rows]),
        [r[3] for r in rows],
        [r[4] for r in rows],
        np.asarray(seeds, dtype=np.int64),
    )


def _progress(it, total: int, enabled: bool, desc: str):  # noqa: ANN001, ANN202
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, unit="img", leave=False)
