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

import mmap
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


def _render(kind: str, seed: int, size: int, forbidden: frozenset) -> tuple:
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


# the arrays a bank's worker processes render into (set before the fork, inherited by the workers)
_SHARED: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def _render_rows(args: tuple[str, list[int], int, int, frozenset]) -> list[tuple[str, list]]:
    """Render ``seeds`` into rows ``start ...`` of the shared arrays; returns their (caption, objects)."""
    kind, seeds, start, size, forbidden = args
    assert _SHARED is not None
    texts = []
    for row, seed in enumerate(seeds, start):
        image, inst, sem, caption, objs = _render(kind, seed, size, forbidden)
        _SHARED[0][row], _SHARED[1][row], _SHARED[2][row] = image, inst, sem
        texts.append((caption, objs))
    return texts


def shared_array(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array in anonymous shared memory: a forked worker's writes are the parent's (pass a slice
    of one as :func:`build_bank`'s ``images_out`` to render several banks' images into one array)."""
    n = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(n, 1)), np.uint8, n).reshape(shape)


def _in_shared_memory(a: np.ndarray) -> bool:
    """Whether ``a`` is a view of a :func:`shared_array`."""
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return isinstance(base, mmap.mmap)


def build_bank(split: str, n: int, size: int, *, kind: str = "scene", start: int = 0,
               forbidden_pairs: frozenset[tuple[str, str]] = frozenset(), workers: int = 2,
               progress: bool = False, images_out: np.ndarray | None = None) -> SceneBank:
    """Render ``n`` samples of ``split`` (seeds ``split_seeds(split, n, start)``) at ``size`` px.

    With ``workers > 1`` forked processes render chunks of rows straight into shared memory (no pixels
    pass through pipes); the bank is the same, byte for byte, with any number of workers. ``images_out``
    (nxSxSx3 uint8; in :func:`shared_array` memory when ``workers > 1``) receives the images, and is the
    bank's ``images``: no copy where several banks make one array."""
    global _SHARED
    seeds = [int(s) for s in split_seeds(split, n, start)]
    if images_out is not None and images_out.shape != (n, size, size, 3):
        raise ValueError(f"images_out is {images_out.shape}, expected {(n, size, size, 3)}")
    if workers > 1 and n >= 64:
        shared = images_out is not None and _in_shared_memory(images_out)
        images = images_out if shared else shared_array((n, size, size, 3))
        arrays = (images, shared_array((n, size, size)), shared_array((n, size, size)))
        chunk = 32
        jobs = [(kind, seeds[a:a + chunk], a, size, forbidden_pairs) for a in range(0, n, chunk)]
        _SHARED = arrays
        try:
            with mp.get_context("fork").Pool(workers) as pool:
                texts = [t for part in _progress(pool.imap(_render_rows, jobs), len(jobs), progress,
                                                 f"render {kind}", unit_scale=chunk) for t in part]
        finally:
            _SHARED = None
        images, inst, sem = arrays
        if images_out is not None and not shared:  # a forked worker's writes to private memory stay its own
            images_out[:] = images
            images = images_out
    else:
        rows = list(_progress((_render(kind, s, size, forbidden_pairs) for s in seeds), n, progress,
                              f"render {kind}"))
        images = np.stack([r[0] for r in rows], out=images_out)
        inst, sem = (np.stack([r[k] for r in rows]) for k in (1, 2))
        texts = [(r[3], r[4]) for r in rows]
    return SceneBank(images, inst, sem, [t[0] for t in texts], [t[1] for t in texts],
                     np.asarray(seeds, dtype=np.int64))


def _progress(it, total: int, enabled: bool, desc: str, unit_scale: int = 1):  # noqa: ANN001, ANN202
    """``it`` with a progress bar of ``total`` items (each ``unit_scale`` images) when ``enabled``."""
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, unit="img", unit_scale=unit_scale, leave=False)
