"""D_CLIP and D_SAM: the two data streams of the merge, with their own resolutions and batch sizes.

Batches are a pure function of (seed, stage, step): a resumed run draws exactly the batches the
killed run would have drawn, and every rank of a distributed run draws the same global batch and
takes its own slice of it.

- D_CLIP yields unlabeled images (HWC uint8 RGB). Sources: the scene world, an image folder, or a
  folder of ``.tar`` shards of images.
- D_SAM yields images with instance masks and a fixed set of geometric prompts per image (so the
  SAM teacher's logits can be cached per image and prompt). Sources: the scene world, or SA-1B-style
  folders (``<name>.jpg`` + ``<name>.json`` with COCO RLE ``annotations[].segmentation``).

Scene-world streams hold their rendered arrays; real data is read from disk on demand
(:mod:`.real_data`), so its size is bounded by the disk, not the memory.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import HELDOUT_PAIRS
from ..data.banks import build_bank, shared_array
from ..inference import mask_crops
from ..prompts import interior_points, jitter_boxes, masks_to_boxes
from .real_data import IMAGE_EXTS, LazyImages, LazySa1bPairs, PairField, index_images, index_sa1b

Images = np.ndarray | LazyImages | PairField  # NxSxSx3 uint8, in memory or read on demand


def step_rng(seed: int, stage: int, step: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, step, stream])


class ClipStream:
    """D_CLIP: N images at one render size (in memory, or read on demand); ``images(idx)`` -> BxSxSx3 uint8.

    With ``hflip`` the stream has 2N items: item ``N + i`` is image ``i`` mirrored left-right, a view of
    its own (its own teacher embedding, cached tokens and cache entry), so distillation sees twice the
    images at no rendering or storage cost.
    """

    def __init__(self, images: Images, hflip: bool = False) -> None:
        self._images = images
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self._images) * (2 if self.hflip else 1)

    def images(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        if not self.hflip:
            return self._images[idx]
        n = len(self._images)
        if ((idx < 0) | (idx >= 2 * n)).any():
            raise IndexError(f"D_CLIP index out of range [0, {2 * n})")
        out = self._images[idx % n]
        mirrored = idx >= n
        out[mirrored] = out[mirrored, :, ::-1]
        return out

    @classmethod
    def scene_world(cls, n: int, size: int, progress: bool = False, single_fraction: float = 0.0,
                    hflip: bool = False) -> ClipStream:
        """``n`` train_merge images: multi-object scenes, and a ``single_fraction`` share of single-object
        scenes (the CLIP teacher's training mix). Held-out (colour, shape) pairs never appear."""
        if not 0.0 <= single_fraction <= 1.0:
            raise ValueError(f"data.clip_single_fraction must be in [0, 1], got {single_fraction}")
        n_single = round(n * single_fraction)
        images = shared_array((n, size, size, 3))  # both parts render into it: no 2N-image peak, no copy
        build_bank("train_merge", n - n_single, size, forbidden_pairs=HELDOUT_PAIRS, progress=progress,
                   images_out=images[: n - n_single])
        if n_single:
            build_bank("train_merge", n_single, size, kind="single", start=8_000_000, forbidden_pairs=HELDOUT_PAIRS,
                       progress=progress, images_out=images[n - n_single :])
        return cls(images, hflip)

    def prefetch(self, idx: np.ndarray) -> None:
        """Start reading the images ``idx`` from disk in the background (real data only; see
        :meth:`~samclip.merge.real_data.LazyImages.prefetch`)."""
        if isinstance(self._images, LazyImages):
            self._images.prefetch(np.asarray(idx) % len(self._images))

    def with_images(self, extra: np.ndarray) -> ClipStream:
        """This stream with ``extra`` (MxSxSx3 uint8, at this stream's size) appended after its own images."""
        if extra.shape[1:] != self._images.shape[1:]:
            raise ValueError(f"extra D_CLIP images are {extra.shape[1:]}, the stream's {self._images.shape[1:]}")
        if isinstance(self._images, LazyImages):
            return ClipStream(self._images.with_extra(extra), self.hflip)
        return ClipStream(np.concatenate([self._images, extra]), self.hflip)

    @classmethod
    def from_folder(cls, folder: str | Path, size: int, limit: int | None = None, hflip: bool = False) -> ClipStream:
        """Images from a folder tree, or from plain ``.tar`` shards inside it, centre-cropped to ``size`` when
        read (only the file index is held); an unreadable image is replaced by the next readable one, with a
        warning (a crawl always has a few; see :class:`~samclip.merge.real_data.LazyImages`)."""
        refs = index_images(folder, limit)
        if not len(refs):
            raise ValueError(f"{folder}: no images found (extensions {sorted(IMAGE_EXTS)} or .tar shards)")
        return cls(LazyImages(refs, size, skip_unreadable=True), hflip)


@dataclass
class SamPrompts:
    """Fixed prompts of one image: ``boxes`` Px4 XYXY and ``points`` Px2 (one positive point each),
    with ``box_targets`` / ``point_targets`` the instance masks PxSxS they were drawn from."""

    boxes: torch.Tensor
    points: torch.Tensor
    box_targets: torch.Tensor
    point_targets: torch.Tensor


class SamStream:
    """D_SAM: images at the SAM size with instance maps (in memory, or read on demand); fixed prompts per
    image."""

    def __init__(self, images: Images, instance_maps: np.ndarray | PairField, per_image: int, seed: int) -> None:
        """``images`` NxSxSx3 uint8 and ``instance_maps`` NxSxS uint8, as arrays or on-demand views of them
        (:class:`~samclip.merge.real_data.LazySa1bPairs`)."""
        self._images = images
        self._inst = instance_maps
        self.per_image = per_image
        self.seed = seed
        self._prompt_pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future[SamPrompts]] = {}

    def __len__(self) -> int:
        return len(self._images)

    @classmethod
    def scene_world(cls, n: int, size: int, per_image: int, seed: int, progress: bool = False) -> SamStream:
        bank = build_bank("train_merge", n, size, start=5_000_000, forbidden_pairs=HELDOUT_PAIRS, progress=progress)
        return cls(bank.images, bank.instance_maps, per_image, seed)

    @classmethod
    def from_sa1b(cls, folder: str | Path, size: int, per_image: int, seed: int,
                  limit: int | None = None, skip_unreadable: bool = True) -> SamStream:
        """SA-1B layout: ``<id>.jpg`` with ``<id>.json`` holding COCO-RLE ``annotations``, read on demand, image
        and masks together (see :class:`~samclip.merge.real_data.LazySa1bPairs` for overlapping masks and for
        ``skip_unreadable``: a pair that cannot be read, or has no mask, gives way to the next one)."""
        refs, jsons = index_sa1b(folder, limit)
        if not len(refs):
            raise ValueError(f"{folder}: no SA-1B style image + json pairs found")
        pairs = LazySa1bPairs(refs, jsons, size, skip_unreadable=skip_unreadable)
        return cls(pairs.images, pairs.instance_maps, per_image, seed)

    def images(self, idx: np.ndarray) -> np.ndarray:
        return self._images[idx]

    def prefetch(self, idx: np.ndarray, prompts: bool = False) -> None:
        """Start reading the images ``idx`` and their instance maps in the background (real data only); with
        ``prompts``, also sample their prompts on a background thread (what a GPU merge does: at 1024 px the host
        would otherwise spend ~0.1 s per image on them while the GPU waits). :meth:`prompts` then takes the
        result; the prompts are the same either way."""
        for source in (self._images, self._inst):
            if hasattr(source, "prefetch"):
                source.prefetch(idx)
        if prompts:
            if self._prompt_pool is None:
                self._prompt_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samclip-prompts")
            for i in map(int, np.asarray(idx).reshape(-1)):
                if i not in self._pending:
                    self._pending[i] = self._prompt_pool.submit(self._sample_prompts, i)

    def instance_map(self, i: int) -> np.ndarray:
        """SxS uint8 instance ids of image ``i`` (0 = no instance)."""
        return self._inst[i]

    def prompts(self, i: int) -> SamPrompts:
        """The fixed prompts of image ``i`` (a pure function of (seed, i)); prefetched ones from the background."""
        pending = self._pending.pop(int(i), None)
        return pending.result() if pending is not None else self._sample_prompts(int(i))

    def _sample_prompts(self, i: int) -> SamPrompts:
        gen = torch.Generator().manual_seed(int(self.seed * 1_000_003 + i))
        inst = torch.from_numpy(self._inst[i].astype(np.int64))
        ids = torch.unique(inst)
        ids = ids[ids > 0]
        if len(ids) == 0:
            raise ValueError(f"D_SAM image {i} has no instances")
        half = self.per_image // 2
        pick = ids[torch.randint(len(ids), (self.per_image,), generator=gen)]
        masks = inst[None] == pick[:, None, None]
        s = inst.shape[-1]
        boxes = jitter_boxes(masks_to_boxes(masks[:half]), gen, size=(s, s))
        points = interior_points(masks[half:], gen)
        return SamPrompts(boxes, points, masks[:half], masks[half:])


def instance_masks(inst: np.ndarray, min_pixels: int) -> list[np.ndarray]:
    """SxS instance ids (0 = none) -> the SxS bool mask of every instance of at least ``min_pixels`` pixels,
    in id order."""
    return [m for m in (inst == k for k in np.unique(inst) if k > 0) if m.sum() >= min_pixels]


def instance_mask_crops(stream: SamStream, n: int, size: int, min_pixels: int = 30) -> np.ndarray:
    """Crops (``size`` px, :func:`samclip.inference.mask_crops` at its default pad) of the first ``n``
    instance masks of at least ``min_pixels`` pixels of ``stream``, image by image -> nxSxSx3 uint8 (fewer
    when the stream has fewer masks)."""
    out: list[np.ndarray] = []
    total = 0
    for i in range(len(stream)):
        if total >= n:
            break
        masks = instance_masks(stream.instance_map(i), min_pixels)[: n - total]
        if masks:
            out.append(mask_crops(stream.images(np.array([i]))[0], np.stack(masks), size))
            total += len(masks)
    return np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)

