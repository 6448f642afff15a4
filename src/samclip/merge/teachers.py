"""The frozen teachers of the merge, with an optional cache of their outputs.

CLIP teacher: image embeddings (L2-normalised) of D_CLIP images at the teacher's own resolution and
normalisation, cached per (image id, teacher resolution). SAM teacher: mask logits and IoU
predictions (all multimask outputs) for each D_SAM image's fixed prompts, cached per image. The cache
lives in memory and is saved to / loaded from ``cache_dir`` (safetensors), keyed by fingerprints of
the teacher weights and of the data stream (:meth:`Teachers.bind_streams`), so neither a different
teacher nor different images ever reuse stale outputs. Each save writes only the entries added since the last
one, as a new part file of its rank (:meth:`Teachers.save`); a load reads every part of every rank.

The SAM side is large: prompts x 3 masks x (4G)^2 fp16 logits per image, 12.6 MB for SAM ViT-B with 32 prompts,
so at SA-1B scale only the CLIP side is cached (``cache_sam=False``). When the whole cache of the streams
would not fit in half the machine's memory, binding the streams fails at once with the sizes, instead of the
run running out of memory hours later.
"""

from __future__ import annotations

import hashlib
import operator
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import atomic_save_safetensors, load_safetensors
from ..models import CLIP, Sam
from ..precision import autocast
from .streams import SamPrompts


def fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().flatten()[:64].cpu().numpy().tobytes())
        h.update(str(float(t.float().sum())).encode())
    return h.hexdigest()[:16]


def stream_fingerprint(stream, samples: int = 16) -> str:  # noqa: ANN001
    """Hash of a data stream: its length, a spread of its images (and instance maps and prompt settings for
    D_SAM)."""
    h = hashlib.sha256(str(len(stream)).encode())
    for i in np.linspace(0, len(stream) - 1, min(samples, len(stream))).astype(int):
        h.update(np.ascontiguousarray(stream.images(np.array([i]))).tobytes())
        if hasattr(stream, "instance_map"):
            h.update(np.ascontiguousarray(stream.instance_map(int(i))).tobytes())
    if hasattr(stream, "per_image"):
        h.update(f"{stream.per_image}/{stream.seed}".encode())
    return h.hexdigest()[:12]


def _physical_memory() -> int:
    """This machine's RAM in bytes (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


class EmbeddingTable:
    """Teacher embeddings by stream index: one dense NxE float32 tensor and a mask of the rows filled, read and
    written like a dict of rows (``i in t``, ``t[i]``, ``t[i] = row``, iteration over the filled indices in
    order). A dict of one tensor per image carried ~10% of object overhead on each 2-3 KB row, which the
    memory check did not count; here the cache is exactly its data, and rows never written are never touched
    (so never made resident). ``capacity``: rows to reserve (it grows by doubling past it)."""

    def __init__(self, capacity: int = 0) -> None:
        self._capacity = capacity
        self._rows: torch.Tensor | None = None
        self._filled = torch.zeros(0, dtype=torch.bool)

    def _reserve(self, n: int, dim: int) -> None:
        rows = self._rows
        if rows is not None and n <= len(rows):
            return
        size = max(n, self._capacity, 2 * (len(rows) if rows is not None else 0))
        grown = torch.empty(size, dim)
        filled = torch.zeros(size, dtype=torch.bool)
        if rows is not None:
            grown[: len(rows)] = rows
            filled[: len(rows)] = self._filled
        self._rows, self._filled = grown, filled

    def __contains__(self, i: object) -> bool:
        try:
            i = operator.index(i)
        except TypeError:
            return False
        return 0 <= i < len(self._filled) and bool(self._filled[i])

    def __getitem__(self, i: int) -> torch.Tensor:
        if i not in self:
            raise KeyError(i)
        return self._rows[i]

    def __setitem__(self, i: int, row: torch.Tensor) -> None:
        self._reserve(i + 1, row.shape[-1])
        self._rows[i] = row
        self._filled[i] = True

    def __iter__(self) -> Iterator[int]:
        return iter(torch.nonzero(self._filled).flatten().tolist())

    def __len__(self) -> int:
        return int(self._filled.sum())

    def put(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        """Write ``rows`` (KxE) at the indices ``ids`` (K) at once."""
        if len(ids):
            self._reserve(int(ids.max()) + 1, rows.shape[-1])
            self._rows[ids] = rows
            self._filled[ids] = True

    def rows(self, ids: list[int]) -> torch.Tensor:
        """The filled rows ``ids`` -> KxE (a copy)."""
        missing = [i for i in ids if i not in self]
        if missing:
            raise KeyError(missing[0])
        return self._rows[torch.as_tensor(ids, dtype=torch.long)]

    def clear(self) -> None:
        self._rows, self._filled = None, torch.zeros(0, dtype=torch.bool)


class Teachers:
    def __init__(self, sam: Sam, clip: CLIP, *, bf16: bool, cache: bool, cache_dir: Path | None,
                 cache_sam: bool = True) -> None:
        self.sam, self.clip = sam.eval(), clip.eval()
        for p in list(self.sam.parameters()) + list(self.clip.parameters()):
            p.requires_grad_(False)
        self.bf16 = bf16
        self.device = next(self.sam.parameters()).device  # teacher outputs are cached on the CPU
        self.use_cache = cache
        self.cache_sam = cache_sam  # with use_cache: the SAM side too (large; see the module docstring)
        self.cache_dir = cache_dir
        self.clip_cache = EmbeddingTable()
        self.sam_cache: dict[int, tuple[torch.Tensor, ...]] = {}
        self._new_clip: set[int] = set()  # entries not written to cache_dir yet
        self._new_sam: set[int] = set()
        self._teacher_keys = (f"clip_{fingerprint(clip)}_{clip.config.vision.image_size}", f"sam_{fingerprint(sam)}")
        self.clip_key, self.sam_key = self._teacher_keys  # + data fingerprints once bound to the streams

    def bind_streams(self, clip_stream, sam_stream) -> None:  # noqa: ANN001
        """Key the cache by the data too (outputs are cached per stream index, so a run with other images
        must never read them), then load what the cache folder holds for these teachers and streams."""
        self.clip_key = f"{self._teacher_keys[0]}-{stream_fingerprint(clip_stream)}"
        self.sam_key = f"{self._teacher_keys[1]}-{stream_fingerprint(sam_stream)}"
        self.clip_cache, self.sam_cache = EmbeddingTable(len(clip_stream) if self.use_cache else 0), {}
        self._new_clip, self._new_sam = set(), set()
        if self.use_cache:
            self._check_memory(clip_stream, sam_stream)
        if self.use_cache and self.cache_dir is not None:
            self._load()

    def cache_bytes(self, clip_stream, sam_stream) -> tuple[int, int]:  # noqa: ANN001
        """Bytes the cache reaches once it holds every image of the streams: (CLIP side, SAM side)."""
        enc = self.sam.config.image_encoder
        side = 4 * (enc.img_size // enc.patch_size)  # the mask decoder's low-res logits
        per_sam_image = sam_stream.per_image * 3 * (side * side * 2 + 4)  # fp16 logits + fp32 IoU
        clip_bytes = len(clip_stream) * self.clip.config.embed_dim * 4
        return clip_bytes, (len(sam_stream) * per_sam_image if self.cache_sam else 0)

    def _check_memory(self, clip_stream, sam_stream) -> None:  # noqa: ANN001
        clip_bytes, sam_bytes = self.cache_bytes(clip_stream, sam_stream)
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # every process of the node holds a whole cache
        clip_bytes, sam_bytes = clip_bytes * ranks, sam_bytes * ranks
        total = _physical_memory()
        if total and clip_bytes + sam_bytes > total / 2:
            gb = 1 << 30
            hint = ("set data.cache_sam_teacher = false (the SAM teacher then runs every step)"
                    if sam_bytes > clip_bytes else "set data.cache_teachers = false")
            raise ValueError(f"the teacher cache would grow to {clip_bytes / gb:.1f} GB (CLIP) + "
                             f"{sam_bytes / gb:.1f} GB (SAM) for these streams ({ranks} process(es) on this node), "
                             f"more than half of this machine's {total / gb:.0f} GB; {hint}")

    # ---------------------------------------------------------------------------------- CLIP
    @property
    def clip_image_size(self) -> int:
        return self.clip.config.vision.image_size

    @torch.no_grad()
    def clip_image_embeddings(self, images: np.ndarray) -> torch.Tensor:
        """BxSxSx3 uint8 images (any S; resized to the teacher's size) -> BxE normalised, on the CPU; uncached."""
        size = self.clip_image_size
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        with autocast(self.device, self.bf16):
            return self.clip.encode_image(self.clip.normalize_images(x), normalize=True).float().cpu()

    @torch.no_grad()
    def clip_embeddings(self, ids: np.ndarray, images: np.ndarray) -> torch.Tensor:
        """BxSxSx3 uint8 D_CLIP images (ids = stream indices) -> BxE normalised teacher embeddings."""
        missing = [j for j, i in enumerate(ids) if not (self.use_cache and int(i) in self.clip_cache)]
        if missing:
            fresh = dict(zip(missing, self.clip_image_embeddings(images[missing])))
        else:
            fresh = {}
        rows = []
        for j, i in enumerate(ids):
            if j in fresh:
                rows.append(fresh[j])
                if self.use_cache:
                    self.clip_cache[int(i)] = fresh[j]
                    self._new_clip.add(int(i))
            else:
                rows.append(self.clip_cache[int(i)])
        return torch.stack(rows)

    # ----------------------------------------------------------------------------------- SAM
    @torch.no_grad()
    def sam_outputs(self, ids: np.ndarray, images: np.ndarray,
                    prompts: list[SamPrompts]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher (box_logits, box_iou, point_logits, point_iou) for each image's fixed prompts,
        concatenated over images: logits (B*P/2)x3xhxw, IoU (B*P/2)x3, float32 on the teachers' device.

        Logits are rounded to fp16 whether or not they are cached (the cache keeps fp16 on the CPU), so a step
        reads the same targets either way; fresh outputs stay on the device (no round trip through host memory
        on a GPU) and cached ones go there as fp16, half the bytes."""
        out = []
        keep = self.use_cache and self.cache_sam
        dev = self.device
        missing = [j for j, i in enumerate(ids) if not (keep and int(i) in self.sam_cache)]
        fresh: dict[int, tuple[torch.Tensor, ...]] = {}
        if missing:
            x = self.sam.preprocess(torch.from_numpy(images[missing]).to(dev).permute(0, 3, 1, 2))
            with autocast(dev, self.bf16):
                emb = self.sam.image_embeddings(x)
                boxes = torch.cat([prompts[j].boxes for j in missing]).to(dev)
                bl, bi = self.sam.decode(emb, boxes=boxes, multimask_output=True)
                pts = torch.cat([prompts[j].points for j in missing]).to(dev)[:, None]
                pl, pi = self.sam.decode(emb, pts, torch.ones(pts.shape[:2], dtype=torch.long, device=dev),
                                         multimask_output=True)
            half = prompts[missing[0]].boxes.shape[0]
            for k, j in enumerate(missing):
                sl = slice(k * half, (k + 1) * half)
                fresh[j] = (bl[sl].half(), bi[sl].float(), pl[sl].half(), pi[sl].float())
        for j, i in enumerate(ids):
            if j in fresh:
                item = fresh[j]
                if keep:
                    self.sam_cache[int(i)] = tuple(t.cpu() for t in item)
                    self._new_sam.add(int(i))
            else:
                item = self.sam_cache[int(i)]
            out.append(item)
        bl, bi, pl, pi = (torch.cat([o[k].to(dev) for o in out]) for k in range(4))
        return bl.float(), bi, pl.float(), pi

    # --------------------------------------------------------------------------------- disk
    def save(self, rank: int = 0) -> list[Path]:
        """Write the entries added since the last save as new part files of this rank
        (``<key>.rank<R>.<N>.safetensors``): a save costs what is new, not the whole cache, and every rank of a
        distributed run keeps what it computed. Returns the files written."""
        if not (self.use_cache and self.cache_dir):
            return []
        written = []
        if self._new_clip:
            ids = sorted(self._new_clip)
            t = {"ids": torch.tensor(ids), "emb": self.clip_cache.rows(ids)}
            written.append(self._write_part(self.clip_key, rank, t))
            self._new_clip = set()
        if self._new_sam:
            ids = sorted(self._new_sam)
            t = {"ids": torch.tensor(ids)}
            for k, name in enumerate(("box_logits", "box_iou", "point_logits", "point_iou")):
                t[name] = torch.stack([self.sam_cache[i][k] for i in ids])
            written.append(self._write_part(self.sam_key, rank, t))
            self._new_sam = set()
        return written

    def _write_part(self, key: str, rank: int, tensors: dict[str, torch.Tensor]) -> Path:
        assert self.cache_dir is not None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        taken = [int(p.name.split(".")[-2]) for p in self.cache_dir.glob(f"{key}.rank{rank}.*.safetensors")]
        path = self.cache_dir / f"{key}.rank{rank}.{max(taken, default=-1) + 1:05d}.safetensors"
        atomic_save_safetensors(tensors, path)
        return path

    def _parts(self, key: str) -> list[Path]:
        """Every saved file of ``key``: the single file of older runs, then all ranks' parts."""
        assert self.cache_dir is not None
        single = self.cache_dir / f"{key}.safetensors"
        return ([single] if single.exists() else []) + sorted(self.cache_dir.glob(f"{key}.rank*.safetensors"))

    def _load(self) -> None:
        for path in self._parts(self.clip_key):
            t = load_safetensors(path)
            self.clip_cache.put(t["ids"].long(), t["emb"].float())
        for path in self._parts(self.sam_key):
            t = load_safetensors(path)
            self.sam_cache.update({int(i): (t["box_logits"][k], t["box_iou"][k], t["point_logits"][k],
                                            t["point_iou"][k]) for k, i in enumerate(t["ids"])})
