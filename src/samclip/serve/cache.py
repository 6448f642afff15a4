"""A thread-safe LRU of image states (one backbone pass each), bounded by count and by bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def state_nbytes(state: Any, _seen: dict[int, int] | None = None) -> int:
    """Approximate memory of an :class:`~samclip.predictor.ImageState` (or of anything it holds): its arrays and
    tensors, including those of nested states (other sizes), of containers and of objects it holds (the decoder's
    first-layer caches, segment_text's candidates). Memory shared by several of them (views, a NumPy array over
    a tensor's storage, one tensor held twice) counts once."""
    top = _seen is None
    seen: dict[int, int] = {} if _seen is None else _seen  # buffer start address -> its bytes

    def buffer(address: int, nbytes: int) -> None:
        seen[address] = max(seen.get(address, 0), nbytes)

    if isinstance(state, torch.Tensor):
        storage = state.untyped_storage()
        buffer(storage.data_ptr(), storage.nbytes())
    elif isinstance(state, np.ndarray):
        root = state
        while isinstance(root.base, np.ndarray):
            root = root.base
        buffer(root.__array_interface__["data"][0], root.nbytes)
    elif isinstance(state, dict):
        for v in state.values():
            state_nbytes(v, seen)
    elif isinstance(state, tuple | list):
        for v in state:
            state_nbytes(v, seen)
    else:
        for v in getattr(state, "__dict__", {}).values():
            state_nbytes(v, seen)
    return sum(seen.values()) if top else 0


@dataclass(eq=False)
class CacheEntry:
    """One cached image: ``state`` (the predictor's ImageState), original ``width`` / ``height``."""

    image_id: str
    state: Any
    width: int
    height: int

    @property
    def nbytes(self) -> int:
        """Measured now: a state grows as tasks fill its lazy caches (CLIP-head outputs, decoder cache)."""
        return state_nbytes(self.state)


class ImageCache:
    """Least-recently-used map ``image_id -> CacheEntry``.

    At most ``max_items`` entries and (when ``max_bytes`` is set) about ``max_bytes`` of state memory
    (sizes are measured at insertion; the newest entry is always kept). ``get`` refreshes an entry;
    evicted ids are simply gone (the service answers 404 and asks for a re-upload).
    """

    def __init__(self, max_items: int, max_bytes: int | None = None) -> None:
        if max_items < 1:
            raise ValueError(f"cache size must be >= 1, got {max_items}")
        self.max_items = int(max_items)
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def put(self, image_id: str, state: Any, width: int, height: int) -> CacheEntry:
        entry = CacheEntry(image_id, state, width, height)
        with self._lock:
            self._items.pop(image_id, None)
            self._items[image_id] = entry
            while len(self._items) > self.max_items or (
                    self.max_bytes is not None and len(self._items) > 1 and self.nbytes > self.max_bytes):
                self._items.popitem(last=False)
                self.evictions += 1
        return entry

    def get(self, image_id: str) -> CacheEntry | None:
        with self._lock:
            entry = self._items.get(image_id)
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end(image_id)
            self.hits += 1
            return entry

    def pop(self, image_id: str) -> CacheEntry | None:
        with self._lock:
            return self._items.pop(image_id, None)

    def __contains__(self, image_id: object) -> bool:
        with self._lock:
            return image_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._items.values())

    def info(self) -> dict[str, int | None]:
        with self._lock:
            return {"size": len(self._items), "max_items": self.max_items, "max_bytes": self.max_bytes,
                    "nbytes": self.nbytes, "hits": self.hits, "misses": self.misses, "evictions": self.evictions}


__all__ = ["CacheEntry", "ImageCache", "state_nbytes"]
