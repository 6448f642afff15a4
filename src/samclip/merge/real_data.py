"""Real data for the merge, read from disk on demand: image folders, ``.tar`` shards, SA-1B folders.

The streams hold an index (file paths, tar member offsets), never the decoded images, so D_CLIP and D_SAM
can be as large as the disk: a step decodes only the images of its batch slice, in a thread pool (Pillow
decodes and resizes without holding the GIL). Items are numbered in sorted path order, and inside a shard
in archive order, so a resumed or distributed run sees the same numbering.

- :class:`LazyImages`: N images, each centre-cropped to a square and resized to ``size`` when read (the
  same pixels as reading them all up front): ``images[i]`` -> SxSx3 uint8, ``images[idx]`` -> BxSxSx3.
- :class:`LazySa1bPairs`: SA-1B images with their annotations (COCO RLE per mask) -> SxS uint8 instance maps,
  read together when asked for; a bad pair can be replaced by the next good one.

Both can read ahead: ``prefetch(ids)`` starts decoding in the pool, and the merge asks for the next step's
batch while it trains on the current one.

Shards must be plain (uncompressed) ``.tar`` files, as webdataset writes them: their members are read at
their offsets with ``os.pread``, without unpacking.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import warnings
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MAX_INSTANCES = 255  # instance ids are uint8
T = TypeVar("T")


@dataclass(frozen=True)
class ImageRef:
    """Where one image's encoded bytes are: a whole file (``length < 0``) or a member of a ``.tar`` shard."""

    path: str
    offset: int = 0
    length: int = -1

    @property
    def name(self) -> str:
        return self.path if self.length < 0 else f"{self.path}@{self.offset}"


class ImageIndex:
    """Where N images' bytes are, compactly: each file path once, and per image a path number, an offset and a
    length (-1: the whole file), about 20 bytes per image (41M images: 0.8 GB, not Python objects of 5 GB)."""

    def __init__(self, paths: Sequence[str], path_ids: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> None:
        self.paths = list(paths)
        self.path_ids = np.asarray(path_ids, np.int32)
        self.offsets = np.asarray(offsets, np.int64)
        self.lengths = np.asarray(lengths, np.int64)
        if not len(self.path_ids) == len(self.offsets) == len(self.lengths):
            raise ValueError("an image index needs one path id, offset and length per image")

    @classmethod
    def from_refs(cls, refs: Iterable[ImageRef]) -> ImageIndex:
        paths: dict[str, int] = {}
        ids, offsets, lengths = array("i"), array("q"), array("q")
        for ref in refs:
            ids.append(paths.setdefault(ref.path, len(paths)))
            offsets.append(ref.offset)
            lengths.append(ref.length)
        return cls(list(paths), np.frombuffer(ids, np.int32), np.frombuffer(offsets, np.int64),
                   np.frombuffer(lengths, np.int64))

    def __len__(self) -> int:
        return len(self.path_ids)

    def __getitem__(self, i: int) -> ImageRef:
        return ImageRef(self.paths[self.path_ids[i]], int(self.offsets[i]), int(self.lengths[i]))

    def __iter__(self) -> Iterator[ImageRef]:
        return (self[i] for i in range(len(self)))


def read_encoded(ref: ImageRef) -> bytes:
    """The encoded bytes of ``ref``. A shard member is read with its own descriptor, opened and closed around one
    ``os.pread`` (a few microseconds against a decode of milliseconds), so thousands of shards never hold
    thousands of descriptors, and decoding threads share nothing."""
    if ref.length < 0:
        return Path(ref.path).read_bytes()
    fd = os.open(ref.path, os.O_RDONLY)
    try:
        data = os.pread(fd, ref.length, ref.offset)
    finally:
        os.close(fd)
    if len(data) != ref.length:
        raise OSError(f"{ref.path}: member at byte {ref.offset} is cut short (the shard changed or is truncated)")
    return data


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="samclip-decode")
        return _POOL


def square_resize(img: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 (centre crop of the short side, then bicubic resize)."""
    return _square(img, size, Image.BICUBIC)


def square_resize_nearest(arr: np.ndarray, size: int) -> np.ndarray:
    """HxW (ids) -> size x size (centre crop of the short side, then nearest-neighbour resize)."""
    return _square(arr, size, Image.NEAREST)


def _square(arr: np.ndarray, size: int, resample: int) -> np.ndarray:
    h, w = arr.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = arr[y0 : y0 + s, x0 : x0 + s]
    if s == size:
        return np.ascontiguousarray(crop)
    return np.asarray(Image.fromarray(crop).resize((size, size), resample))


def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """Encoded image bytes -> HxWx3 uint8 RGB as stored (no EXIF rotation: label maps and masks are stored
    unrotated too). 16-bit images keep their high byte (``convert("RGB")`` would saturate them white); 32-bit
    float / integer images are refused (their value range is unknown). OSError naming ``name`` otherwise."""
    from ..inference.image_input import pil_to_rgb_uint8

    try:
        with Image.open(io.BytesIO(data)) as im:
            return pil_to_rgb_uint8(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise OSError(f"{name}: not a readable image ({e})") from None


def read_rgb_file(path: str | Path) -> np.ndarray:
    """:func:`decode_rgb` of a file."""
    return decode_rgb(Path(path).read_bytes(), str(path))


# --------------------------------------------------------------------------------------------- index
def index_images(folder: str | Path, limit: int | None = None) -> ImageIndex:
    """Every image under ``folder`` (recursively; also the image members of ``.tar`` shards), in sorted
    path order and archive order, at most ``limit``."""
    return ImageIndex.from_refs(_walk_images(Path(folder), limit))


def _walk_images(folder: Path, limit: int | None) -> Iterator[ImageRef]:
    count = 0
    for path in sorted(folder.rglob("*")):
        if limit is not None and count >= limit:
            return
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTS and path.is_file():
            count += 1
            yield ImageRef(str(path))
        elif suffix == ".tar":
            for ref in _tar_members(path, None if limit is None else limit - count):
                count += 1
                yield ref


def _tar_members(path: Path, limit: int | None) -> Iterator[ImageRef]:
    try:
        tar = tarfile.open(path, "r:")  # plain tar only: members are read at their offsets
    except tarfile.ReadError as e:
        raise ValueError(f"{path}: not a plain .tar shard ({e}); compressed shards are not supported") from None
    count = 0
    with tar:
        try:
            for member in tar:
                if limit is not None and count >= limit:
                    return
                if member.isfile() and Path(member.name).suffix.lower() in IMAGE_EXTS:
                    yield ImageRef(str(path), member.offset_data, member.size)
                    count += 1
        except tarfile.TarError as e:  # a truncated or corrupt shard: its headers stop making sense
            raise ValueError(f"{path}: a truncated or corrupt .tar shard ({e})") from None


# ---------------------------------------------------------------------------------------- lazy arrays
class _OnDemand:
    """Items read by ``_load(i)`` when indexed; :meth:`prefetch` starts reading items in the thread pool ahead
    of their use (the trainer asks for the next step's batch), and a later read takes them from there. Reads
    asked for two prefetches ago and never taken (a stage that ended, an early stop) are dropped."""

    MAX_PENDING = 4096  # items read ahead at most
    MAX_SKIPPED_IN_A_ROW = 16  # bad items replaced in a row before the folder is judged broken

    def __init__(self, skip_unreadable: bool = False) -> None:
        self._pending: dict[int, tuple[int, Future]] = {}  # item -> (prefetch call, read)
        self._calls = 0
        self.skip_unreadable = skip_unreadable
        self.unreadable: set[str] = set()  # items replaced so far (their names)
        self._unreadable_lock = threading.Lock()

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def _index(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range [0, {len(self)})")
        return i % len(self)

    def prefetch(self, ids: np.ndarray | list[int]) -> None:
        """Start reading ``ids`` in the background (ignored beyond :attr:`MAX_PENDING` waiting items)."""
        self._calls += 1
        for i in [i for i, (call, _) in self._pending.items() if call < self._calls - 1]:
            self._pending.pop(i)[1].cancel()
        for i in (self._index(int(i)) for i in np.asarray(ids).reshape(-1)):
            if i not in self._pending and len(self._pending) < self.MAX_PENDING:
                self._pending[i] = (self._calls, _pool().submit(self._load, i))

    def _first_readable(self, i: int, read: Callable[[int], T], name: Callable[[int], str], what: str) -> T:
        """``read(j)`` of the first item ``j`` from ``i`` on (wrapping) that reads without an OSError / ValueError.

        Only with ``self.skip_unreadable``; otherwise the first error is raised. Each replaced item's ``name`` goes
        into ``self.unreadable``, with one warning the first time (``what``: "image", "SA-1B pair")."""
        tries = min(self.MAX_SKIPPED_IN_A_ROW + 1, len(self))
        for k in range(tries):
            j = (i + k) % len(self)
            try:
                return read(j)
            except (OSError, ValueError) as e:
                if not self.skip_unreadable:
                    raise
                with self._unreadable_lock:  # decoding threads meet the same file
                    first = name(j) not in self.unreadable
                    self.unreadable.add(name(j))
                if first:
                    warnings.warn(f"skipping an unreadable {what}, the next one takes its place: {e}", stacklevel=3)
        raise OSError(f"{tries} unreadable {what}s in a row from item {i} (the first: {name(i)}); "
                      "is the data folder intact?")

    def _take(self, ids: list[int]) -> list[np.ndarray]:
        """The items ``ids`` (already in range), from the prefetched reads where there are some; the rest
        read now, in parallel."""
        futures = [self._pending.pop(i, (0, None))[1] for i in ids]
        todo = [i for i, f in zip(ids, futures) if f is None]
        fresh = iter(_pool().map(self._load, todo) if len(todo) > 1 else map(self._load, todo))
        return [f.result() if f is not None else next(fresh) for f in futures]


class LazyImages(_OnDemand):
    """The images of ``refs`` read on demand at ``size`` px (plus ``extra``, images already in memory at that
    size, numbered after them); indexed like an NxSxSx3 uint8 array.

    ``skip_unreadable``: an image that cannot be read (a web crawl always has a few) is replaced by the next
    readable one, with a warning naming it once; the replacement is a function of the index, so resumed runs
    and every rank still see the same data. Otherwise (the default) it is an error."""

    def __init__(self, refs: ImageIndex | Sequence[ImageRef], size: int, extra: np.ndarray | None = None,
                 skip_unreadable: bool = False) -> None:
        super().__init__(skip_unreadable)
        if extra is not None and extra.shape[1:] != (size, size, 3):
            raise ValueError(f"extra images are {extra.shape[1:]}, the stream's ({size}, {size}, 3)")
        self.refs = refs if isinstance(refs, ImageIndex) else ImageIndex.from_refs(refs)
        self.size = size
        self.extra = extra if extra is not None else np.zeros((0, size, size, 3), np.uint8)

    def __len__(self) -> int:
        return len(self.refs) + len(self.extra)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.size, self.size, 3)

    def with_extra(self, extra: np.ndarray) -> LazyImages:
        return LazyImages(self.refs, self.size, np.concatenate([self.extra, extra]), self.skip_unreadable)

    def _load(self, i: int) -> np.ndarray:
        return self._first_readable(i, self._read, self._name, "image")

    def _read(self, j: int) -> np.ndarray:
        if j >= len(self.refs):
            return self.extra[j - len(self.refs)].copy()
        return read_image(self.refs[j], self.size)

    def _name(self, j: int) -> str:
        return self.refs[j].name if j < len(self.refs) else str(j)

    def __getitem__(self, idx: int | np.integer | np.ndarray | list[int]) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self._take([self._index(int(idx))])[0]
        ids = np.asarray(idx).reshape(-1)
        if ids.dtype == bool:
            ids = np.flatnonzero(ids)
        if len(ids) == 0:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        return np.stack(self._take([self._index(int(i)) for i in ids]))


def read_image(ref: ImageRef, size: int) -> np.ndarray:
    """One image (a file or a tar member), centre-cropped to a square and resized -> SxSx3 uint8 RGB."""
    return square_resize(decode_rgb(read_encoded(ref), ref.name), size)


def read_instance_map(path: str, size: int) -> np.ndarray:
    """An SA-1B annotation file (``annotations[].segmentation`` in COCO RLE) -> SxS uint8 instance map.

    SA-1B's masks overlap (wholes and their parts): the largest ``MAX_INSTANCES`` are painted largest first, so
    a part keeps its own id and a whole keeps what its parts leave visible."""
    inst = instance_map_full(path)
    if inst is None:  # no masks
        return np.zeros((size, size), np.uint8)
    return square_resize_nearest(inst, size)


def instance_map_full(path: str) -> np.ndarray | None:
    """:func:`read_instance_map` at the masks' own HxW (None: the file has no masks); ValueError naming the file
    where it is not an SA-1B annotation file or its masks disagree on their size."""
    from pycocotools import mask as mask_utils

    try:
        ann = json.loads(Path(path).read_text())
        segs = sorted(ann.get("annotations", []), key=lambda a: -a.get("area", 0))[:MAX_INSTANCES]
        inst: np.ndarray | None = None
        for k, a in enumerate(segs):
            rle = dict(a["segmentation"])
            h, w = (int(v) for v in rle["size"])
            if h < 1 or w < 1:
                raise ValueError(f"mask size {rle['size']} is not a positive height and width")
            if isinstance(rle.get("counts"), str):
                rle["counts"] = rle["counts"].encode()
            m = mask_utils.decode(rle).astype(bool)
            if inst is None:
                inst = np.zeros(m.shape, np.uint8)
            if m.shape != inst.shape:
                raise ValueError(f"masks of different sizes ({m.shape} and {inst.shape})")
            inst[m] = k + 1
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise ValueError(f"{path}: not an SA-1B annotation file ({type(e).__name__}: {e})") from None
    return inst


class LazySa1bPairs(_OnDemand):
    """SA-1B image + annotation pairs, read together on demand: pair ``i`` -> (SxSx3 uint8 image, SxS uint8
    instance map, 0 = no mask). :attr:`images` and :attr:`instance_maps` index them like the scene world's
    arrays; the pairs read last are kept, so a step that asks for a batch's images and then for their maps
    reads each pair once.

    ``skip_unreadable``: a pair whose image or annotation cannot be read, or whose masks all vanish at ``size``,
    is replaced, image and masks together, by the next good pair, with one warning per file; the replacement
    is a function of the index (resumed runs and every rank agree). Otherwise such a pair is an error."""

    KEEP_RECENT = 512  # pairs kept after they were read

    def __init__(self, refs: ImageIndex | Sequence[ImageRef], json_paths: Sequence[str], size: int,
                 skip_unreadable: bool = False) -> None:
        super().__init__(skip_unreadable)
        self.refs = refs if isinstance(refs, ImageIndex) else ImageIndex.from_refs(refs)
        self.paths = list(json_paths)
        if len(self.refs) != len(self.paths):
            raise ValueError(f"{len(self.refs)} images but {len(self.paths)} annotation files")
        self.size = size
        self._lock = threading.Lock()  # the recent pairs
        self._recent: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.images = PairField(self, 0)
        self.instance_maps = PairField(self, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self._first_readable(i, self._read, self.paths.__getitem__, "SA-1B pair")

    def _read(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        full = instance_map_full(self.paths[j])
        image = decode_rgb(read_encoded(self.refs[j]), self.refs[j].name)
        if full is not None and full.shape != image.shape[:2]:  # cropped apart, they would not line up
            raise ValueError(f"{self.paths[j]}: its masks are {full.shape[1]}x{full.shape[0]}, its image "
                             f"{self.refs[j].name} is {image.shape[1]}x{image.shape[0]}")
        inst = np.zeros((self.size, self.size), np.uint8) if full is None else square_resize_nearest(full, self.size)
        if not inst.any():
            raise ValueError(f"{self.paths[j]}: no mask at {self.size} px")
        return square_resize(image, self.size), inst

    def pairs(self, ids: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The pairs ``ids`` (in range), from those kept where they are; the rest read now, in parallel."""
        with self._lock:
            kept = {i: self._recent[i] for i in ids if i in self._recent}
        todo = list(dict.fromkeys(i for i in ids if i not in kept))
        fresh = dict(zip(todo, self._take(todo))) if todo else {}
        with self._lock:
            for i, pair in fresh.items():
                self._recent[i] = pair
            for i in ids:
                self._recent.move_to_end(i)
            while len(self._recent) > self.KEEP_RECENT:
                self._recent.popitem(last=False)
        return [kept[i] if i in kept else fresh[i] for i in ids]


class PairField:
    """One field of :class:`LazySa1bPairs` (0: images, 1: instance maps), indexed like an array of it."""

    def __init__(self, pairs: LazySa1bPairs, field: int) -> None:
        self._pairs, self._field = pairs, field

    def __len__(self) -> int:
        return len(self._pairs)

    def prefetch(self, ids: np.ndarray | list[int]) -> None:
        if self._field == 0:  # one read-ahead per pair: the images' view starts it, the maps' view shares it
            self._pairs.prefetch(ids)

    def __getitem__(self, idx: int | np.integer | np.ndarray | list[int]) -> np.ndarray:
        pairs = self._pairs
        if isinstance(idx, (int, np.integer)):
            return pairs.pairs([pairs._index(int(idx))])[0][self._field]
        ids = [pairs._index(int(i)) for i in np.asarray(idx).reshape(-1)]
        if not ids:
            shape = (pairs.size, pairs.size, 3) if self._field == 0 else (pairs.size, pairs.size)
            return np.zeros((0, *shape), np.uint8)
        return np.stack([p[self._field] for p in pairs.pairs(ids)])


def index_sa1b(folder: str | Path, limit: int | None = None) -> tuple[ImageIndex, list[str]]:
    """``<id>.json`` + ``<id>.jpg`` (or ``.jpeg`` / ``.png``) pairs in ``folder``, sorted, at most ``limit``."""
    images: list[ImageRef] = []
    jsons: list[str] = []
    for jpath in sorted(Path(folder).glob("*.json")):
        if limit is not None and len(jsons) >= limit:
            break
        ipath = next((jpath.with_suffix(e) for e in (".jpg", ".jpeg", ".png") if jpath.with_suffix(e).exists()),
                     None)
        if ipath is not None:
            images.append(ImageRef(str(ipath)))
            jsons.append(str(jpath))
    return ImageIndex.from_refs(images), jsons
