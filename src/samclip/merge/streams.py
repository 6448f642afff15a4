"""D_CLIP and D_SAM: the two data streams of the merge, with their own resolutions and batch sizes.

Batches are a pure function of (seed, stage, step): a resumed run draws exactly the batches the
killed run would have drawn, and every rank of a distributed run draws the same global batch and
takes its own slice of it.

- D_CLIP yields unlabeled images (HWC uint8 RGB). Sources: the scene world, an image folder, or a
  folder of ``.tar`` shards of images.
- D_SAM yields images with instance masks and a fixed set of geometric prompts per image (so the
  SAM teacher's logits can be cached per image and prompt). Sources: the scene world, or SA-1B-style
  folders (``<name>.jpg`` + ``<name>.json`` with COCO RLE ``annotations[].segmentation``).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import HELDOUT_PAIRS
from ..data.banks import build_bank
from ..inference import mask_crops
from ..prompts import interior_points, jitter_boxes, masks_to_boxes

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def step_rng(seed: int, stage: int, step: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, step, stream])


def square_resize(img: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 (centre crop of the short side, then bicubic resize)."""
    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = img[y0 : y0 + s, x0 : x0 + s]
    if s == size:
        return crop
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))


class ClipStream:
    """D_CLIP: N images held at one render size; ``images(idx)`` -> BxSxSx3 uint8.

    With ``hflip`` the stream has 2N items: item ``N + i`` is image ``i`` mirrored left-right, a view of
    its own (its own teacher embedding, cached tokens and cache entry), so distillation sees twice the
    images at no rendering or storage cost.
    """

    def __init__(self, images: np.ndarray, hflip: bool = False) -> None:
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
        parts = [build_bank("train_merge", n - n_single, size, forbidden_pairs=HELDOUT_PAIRS, progress=progress)]
        if n_single:
            parts.append(build_bank("train_merge", n_single, size, kind="single", start=8_000_000,
                                    forbidden_pairs=HELDOUT_PAIRS, progress=progress))
        return cls(np.concatenate([p.images for p in parts]), hflip)

    def with_images(self, extra: np.ndarray) -> ClipStream:
        """This stream with ``extra`` (MxSxSx3 uint8, at this stream's size) appended after its own images."""
        if extra.shape[1:] != self._images.shape[1:]:
            raise ValueError(f"extra D_CLIP images are {extra.shape[1:]}, the stream's {self._images.shape[1:]}")
        return ClipStream(np.concatenate([self._images, extra]), self.hflip)

    @classmethod
    def from_folder(cls, folder: str | Path, size: int, limit: int | None = None, hflip: bool = False) -> ClipStream:
        """Images from a folder tree, or from ``.tar`` shards inside it, centre-cropped to ``size``."""
        imgs = [square_resize(im, size) for im in _iter_folder_images(Path(folder), limit)]
        if not imgs:
            raise ValueError(f"{folder}: no images found (extensions {sorted(IMAGE_EXTS)} or .tar shards)")
        return cls(np.stack(imgs), hflip)


def _iter_folder_images(folder: Path, limit: int | None):  # noqa: ANN202
    count = 0
    for path in sorted(folder.rglob("*")):
        if limit is not None and count >= limit:
            return
        if path.suffix.lower() in IMAGE_EXTS:
            yield np.asarray(Image.open(path).convert("RGB"))
            count += 1
        elif path.suffix == ".tar":
            with tarfile.open(path) as tar:
                for member in tar:
                    if limit is not None and count >= limit:
                        return
                    if member.isfile() and Path(member.name).suffix.lower() in IMAGE_EXTS:
                        data = tar.extractfile(member).read()
                        yield np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                        count += 1


@dataclass
class SamPrompts:
    """Fixed prompts of one image: ``boxes`` Px4 XYXY and ``points`` Px2 (one positive point each),
    with ``box_targets`` / ``point_targets`` the instance masks PxSxS they were drawn from."""

    boxes: torch.Tensor
    points: torch.Tensor
    box_targets: torch.Tensor
    point_targets: torch.Tensor


class SamStream:
    """D_SAM: images at the SAM size with instance maps; fixed prompts per image."""

    def __init__(self, images: np.ndarray, instance_maps: np.ndarray, per_image: int, seed: int) -> None:
        self._images = images
        self._inst = instance_maps
        self.per_image = per_image
        self.seed = seed

    def __len__(self) -> int:
        return len(self._images)

    @classmethod
    def scene_world(cls, n: int, size: int, per_image: int, seed: int, progress: bool = False) -> SamStream:
        bank = build_bank("train_merge", n, size, start=5_000_000, forbidden_pairs=HELDOUT_PAIRS, progress=progress)
        return cls(bank.images, bank.instance_maps, per_image, seed)

    @classmethod
    def from_sa1b(cls, folder: str | Path, size: int, per_image: int, seed: int,
                  limit: int | None = None) -> SamStream:
        """SA-1B layout: ``<id>.jpg`` with ``<id>.json`` holding COCO-RLE ``annotations``."""
        from pycocotools import mask as mask_utils

        images, maps = [], []
        for jpath in sorted(Path(folder).glob("*.json"))[:limit]:
            ipath = next((jpath.with_suffix(e) for e in (".jpg", ".jpeg", ".png")
                          if jpath.with_suffix(e).exists()), None)
            if ipath is None:
                continue
            img = np.asarray(Image.open(ipath).convert("RGB"))
            ann = json.loads(jpath.read_text())
            inst = np.zeros(img.shape[:2], np.uint8)
            segs = sorted(ann.get("annotations", []), key=lambda a: -a.get("area", 0))[:255]
            for i, a in enumerate(segs):
                rle = a["segmentation"]
                if isinstance(rle.get("counts"), str):
                    rle = {**rle, "counts": rle["counts"].encode()}
                inst[mask_utils.decode(rle).astype(bool)] = i + 1
            images.append(square_resize(img, size))
            maps.append(square_resize_nearest(inst, size))
        if not images:
            raise ValueError(f"{folder}: no SA-1B style image + json pairs found")
        return cls(np.stack(images), np.stack(maps), per_image, seed)

    def images(self, idx: np.ndarray) -> np.ndarray:
        return self._images[idx]

    def instance_map(self, i: int) -> np.ndarray:
        """SxS uint8 instance ids of image ``i`` (0 = no instance)."""
        return self._inst[i]

    def prompts(self, i: int) -> SamPrompts:
        """The fixed prompts of image ``i`` (a pure function of (seed, i))."""
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


def square_resize_nearest(arr: np.ndarray, size: int) -> np.ndarray:
    h, w = arr.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = arr[y0 : y0 + s, x0 : x0 + s]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.NEAREST))
