"""Open-vocabulary labels of masks from the cached pass: mask poolings, crops, ``label_masks``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.crops import mask_crops
from ..inference.image_input import (
    REGION_CONTEXT,
    REGION_MIN_COVER,
    covered_tokens,
    mask_to_grid_weights,
    valid_grid,
)
from ..inference.zoom import zoom_window
from ..prompts import masks_to_boxes
from .base import PredictorBase
from .checks import check_fraction, check_int, check_labels, check_pooling, checked_flags
from .state import ImageState
from .zoom import window_state

#: the ``pooling`` choices of :meth:`Predictor.mask_embeddings` / :meth:`Predictor.label_masks`
MASK_POOLINGS: tuple[str, ...] = ("auto", "max", "region", "mean", "crop", "max+crop", "zoom", "zoom+crop")


class MaskLabelling(PredictorBase):
    """``mask_embeddings`` / ``label_masks``: CLIP-space reads of masks of the current image."""

    def _check_masks(self, masks: Any, original_size: tuple[int, int]) -> torch.Tensor:
        try:
            m = masks.detach().cpu() if isinstance(masks, torch.Tensor) else torch.from_numpy(np.asarray(masks))
        except TypeError as err:
            raise ValueError(f"masks must be an NxHxW boolean array, got {type(masks).__name__}") from err
        if m.ndim == 2:
            m = m[None]
        if m.ndim != 3 or tuple(m.shape[1:]) != tuple(original_size):
            raise ValueError(f"masks must be NxHxW with (H, W) = {tuple(original_size)} (the original image), "
                             f"got shape {tuple(m.shape)}")
        if m.dtype != torch.bool:
            if m.is_floating_point() or m.is_complex() or not ((m == 0) | (m == 1)).all():
                raise ValueError(f"masks must be boolean (or 0/1 integers), got {m.dtype}; threshold logits first")
            m = m.bool()
        return m.to(self.device)

    @checked_flags
    def mask_embeddings(self, masks: Any, *, pooling: str = "auto", min_cover: float = REGION_MIN_COVER,
                        context: int = REGION_CONTEXT, tta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP-space embeddings of masks of the current image, from the cached backbone pass.

        ``masks``: NxHxW bool in original-image pixels (an HxW mask counts as N=1); each becomes
        per-patch area weights (pixel counts per token, :func:`samclip.inference.mask_to_grid_weights`).
        ``pooling``:
          - ``"max"``: the head's own max-pool / LayerNorm / MLP limited to the mask's patches (at least
            ``min_cover`` covered; the most covered one if none is) grown by ``context`` rings of
            neighbouring patches (:func:`samclip.inference.covered_tokens`), on the cached head tokens (no
            extra compute beyond a masked max); what the merge's region distillation trains, when it is on.
          - ``"region"``: the CLIP head runs again on the cached backbone tokens with its attention
            restricted to the mask's patches, then the same masked max-pool / LayerNorm / MLP: the head's
            trained pooled path, as if the region were the whole image (3 small blocks per mask).
          - ``"mean"``: area-weighted mean of the normalised per-patch embeddings (no extra compute).
          - ``"crop"``: NOT one pass: each mask's square crop (grey outside the mask,
            :func:`samclip.inference.mask_crops`) is encoded by the whole model (backbone + CLIP head,
            pooled) at ``clip_size``, batched: OV-SAM's crop-and-classify with the one merged model.
          - ``"max+crop"``: NOT one pass: the normalised sum of the ``"max"`` read and the ``"crop"`` read (each
            with ``tta`` as asked). The two make different mistakes: on two val sets of ~430 objects each it
            labelled clicks / boxes 61.7 / 68.8% and 60.5 / 69.0% with ``tta=True`` on the max read only (62.4 /
            67.2% and 59.3 / 69.0% without), vs 55.4 / 64.7% and 54.4 / 62.6% for ``"crop"`` and 58.8 / 60.1%
            and 56.7 / 58.6% for ``"max"`` with ``tta``; mirroring the crop too added 1.1 / 1.6 and 0.8 / 1.4
            points on two other val sets of ~367 objects (docs/experiments.md).
          - ``"zoom"``: NOT one pass: ``"max"`` on the pass over the mask's zoom window (a square of 3x the
            mask's box around it, re-encoded at the image's frame, as ``predict(zoom=True)`` does and shared with
            it; the image's own pass where the window would not magnify): the head reads the object magnified.
            On two val sets of ~430 objects, with ``tta`` and zoomed masks: clicks / boxes 69.7 / 73.6% and 66.9
            / 72.3%, vs 64.0 / 71.3% and 63.4 / 73.0% for ``"max+crop"`` (docs/experiments.md).
          - ``"zoom+crop"``: NOT one pass: the normalised sum of the ``"zoom"`` and ``"crop"`` reads; the best
            box labels (the same sets: 68.1 / 77.7% and 66.0 / 76.8%).
          - ``"auto"``: ``"max"`` (``"mean"`` under an ONNX export of format version 1, whose image graph
            outputs only per-patch embeddings; version 2 outputs the head's tokens, and max pools as PyTorch):
            one backbone pass serves every task. ``samclip eval``'s labelling benchmark measures them all:
            on the shipped model ``"crop"`` labels best (test clicks / boxes 49.4 / 60.9% vs 44.7 / 51.1% for
            ``"max"``), at one extra pass per mask.
        Max and region pooling read the pass at the model's ``label_size`` (0: ``clip_size``, where the head
        is trained; the merge picks it on val), mean pooling the one at ``semseg_size``; either is the cached
        SAM-size pass when equal.
        ``tta`` (off by default): also pool the mirrored mask on the mirrored image's pass (max / region / mean
        pooling: one extra backbone pass per image, cached), and read each crop's mirror image too (crop
        poolings: twice the crop passes); the two normalised embeddings are averaged.
        Off here by default (chosen on the previous shipped model, whose clicked / boxed objects it did not
        label better on val: 33.6 / 32.7 vs 34.1 / 33.6%); on the shipped model it labels test clicks / boxes
        47.7 / 51.5% vs 44.7 / 51.1%, and :meth:`semantic_segment`'s relabelling uses it when the model has TTA.
        Returns ``(embeddings NxE L2-normalised, empty N bool)``; an empty mask has an all-zero row.
        """
        self._require_clip("mask_embeddings")
        check_pooling(pooling, MASK_POOLINGS)
        m = self._check_masks(masks, self.state.original_size)
        check_fraction(min_cover, "min_cover")
        check_int(context, "context", 0)
        if pooling == "auto":
            pooling = "max" if self._reads_head_tokens else "mean"
        if pooling in ("region", "crop", "max+crop", "zoom+crop") and self._onnx is not None:
            raise ValueError(f"pooling={pooling!r} needs the PyTorch model; an ONNX predictor supports 'max', "
                             "'zoom' and 'mean'")
        if pooling in ("max", "zoom") and not self._reads_head_tokens:
            raise ValueError(f"pooling={pooling!r} needs the CLIP head's tokens, which this ONNX export (format "
                             "version 1) lacks: re-export the model, or use pooling='mean'")
        if pooling == "crop":
            return self._crop_embeddings(m, mirrored=tta)
        if pooling in ("max+crop", "zoom+crop"):
            first = pooling.split("+")[0]
            one_pass, empty = self.mask_embeddings(m, pooling=first, min_cover=min_cover, context=context, tta=tta)
            crops, _ = self._crop_embeddings(m, mirrored=tta)
            return F.normalize(one_pass + crops, dim=-1), empty
        if pooling == "zoom":
            return self._zoom_embeddings(m, min_cover, context, tta)
        return self._pooled_read(self.state, m, pooling, min_cover, context, tta)

    def _pooled_read(self, base: ImageState, m: torch.Tensor, pooling: str, min_cover: float, context: int,
                     tta: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """NxHxW bool masks of ``base``'s image -> (NxE normalised embeddings, empty N) by ``pooling`` ("max",
        "region" or "mean") on the pass of ``base``'s image the task reads, with the mirrored pass if ``tta``."""
        task = "semseg" if pooling == "mean" else "label"
        emb, empty = self._pooled_masks(self._clip_state(None, task, base=base), m, pooling, min_cover, context)
        if tta and len(m):
            mirrored, _ = self._pooled_masks(self._clip_state(None, task, mirrored=True, base=base), m.flip(-1),
                                             pooling, min_cover, context)
            emb = F.normalize(emb, dim=-1) + F.normalize(mirrored, dim=-1)
        return F.normalize(emb, dim=-1), empty

    def _zoom_embeddings(self, m: torch.Tensor, min_cover: float, context: int,
                         tta: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``pooling="zoom"``: each mask max-pooled on the pass over its zoom window (:func:`zoom_window` of the
        mask's box; cached with the image, shared with ``predict(zoom=True)``), or on the image's own pass
        where the window would not magnify."""
        state = self.state
        emb = torch.zeros(len(m), self.model.clip_head.config.out_dim, device=self.device)
        empty = ~m.flatten(1).any(1)
        boxes = masks_to_boxes(m.cpu())
        unzoomed = []
        for i in (~empty).nonzero()[:, 0].tolist():
            self._check_interrupt()
            window = zoom_window(tuple(boxes[i].tolist()), state.original_size)
            if window is None:
                unzoomed.append(i)
                continue
            x0, y0, x1, y1 = window
            emb[i] = self._pooled_read(window_state(self, window), m[i : i + 1, y0:y1, x0:x1], "max", min_cover,
                                       context, tta)[0][0]
        if unzoomed:  # one read of the image's own pass for them all
            emb[unzoomed] = self._pooled_read(state, m[unzoomed], "max", min_cover, context, tta)[0]
        return emb, empty

    def _pooled_masks(self, state: ImageState, m: torch.Tensor, pooling: str, min_cover: float,
                      context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """NxHxW bool masks (original pixels of ``state``'s image) -> (NxE embeddings, not normalised;
        empty N bool) by ``pooling`` ("max", "region" or "mean") on ``state``'s pass."""
        dim = self.model.clip_head.config.out_dim
        if m.shape[0] == 0:
            return torch.zeros(0, dim, device=self.device), torch.zeros(0, dtype=torch.bool, device=self.device)
        weights = mask_to_grid_weights(m, state.input_size, self.patch_size, state.grid)
        empty = weights.flatten(1).sum(1) == 0
        emb = torch.zeros(len(m), dim, device=self.device)
        if pooling == "mean":
            emb = torch.einsum("ngh,ghe->ne", weights, self._patch_embeddings(state))
        elif pooling == "max" and not bool(empty.all()):
            emb[~empty] = self._max_embeddings(state, weights[~empty], min_cover, context)
        elif not bool(empty.all()):
            emb[~empty] = self._region_embeddings(state, weights[~empty], min_cover, context)
        return emb, empty

    @checked_flags
    def label_masks(self, masks: Any, labels: Sequence[str], templates: Sequence[str] | None = None, *,
                    pooling: str = "auto", min_cover: float = REGION_MIN_COVER,
                    context: int = REGION_CONTEXT, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Classify masks of the current image (embeddings from :meth:`mask_embeddings`, same arguments).

        Returns ``(label_indices N int64, probs NxK float32)``. An EMPTY mask is flagged with label
        index ``-1`` and an all-zero probability row.
        """
        self._require_clip("label_masks")
        labels = check_labels(labels)
        emb, empty = self.mask_embeddings(masks, pooling=pooling, min_cover=min_cover, context=context, tta=tta)
        txt = self.text_embeddings(labels, templates)
        if emb.shape[0] == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, len(labels)), dtype=np.float32)
        probs = (self._logit_scale() * emb @ txt.T).softmax(-1)
        probs[empty] = 0.0
        idx = probs.argmax(-1)
        idx[empty] = -1
        return idx.cpu().numpy().astype(np.int64), probs.cpu().numpy().astype(np.float32)

    def _mask_class_logits(self, masks: torch.Tensor, labels: list[str], templates: Sequence[str] | None,
                           tta: bool | None, pooling: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """NxHxW bool masks (original pixels) -> (Nx(1+K) logits ``exp(logit_scale) * cos`` of each mask's
        CLIP-head read (:meth:`mask_embeddings`, default pooling) against background + labels, empty N bool).
        ``tta=None``: the mirrored view too when the model's classification has TTA and the head's tokens are
        at hand (:attr:`_reads_head_tokens`)."""
        emb, empty = self.mask_embeddings(masks.cpu().numpy(), pooling=pooling, tta=self._mask_tta(tta))
        return self._logit_scale() * emb @ self._class_table(labels, templates).T, empty

    def _mask_tta(self, tta: bool | None) -> bool:
        """``tta`` of the composed tasks' mask reads; ``None``: the mirrored view when the model's classification
        has TTA and the head's tokens are at hand."""
        return bool(self._reads_head_tokens and self.model.config.has_tta) if tta is None else tta

    def _crop_embeddings(self, masks: torch.Tensor, mirrored: bool = False,
                         batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """NxHxW bool masks -> (NxE normalised embeddings of their crops at ``clip_size``, empty N bool);
        ``mirrored``: each the normalised sum of the crop's and its mirror image's embeddings."""
        size = self.model.config.clip_size
        empty = ~masks.flatten(1).any(1)
        crops = mask_crops(self.state.image, masks.cpu().numpy(), size)
        out = torch.zeros(len(masks), self.model.clip_head.config.out_dim, device=self.device)
        keep = (~empty).nonzero()[:, 0]
        with torch.no_grad(), self._autocast():
            for i in range(0, len(keep), batch):
                self._check_interrupt()
                rows = keep[i : i + batch]
                x = torch.from_numpy(crops[rows.cpu().numpy()]).to(self.device).permute(0, 3, 1, 2)
                if mirrored:
                    x = torch.cat([x, x.flip(-1)])
                emb = self.model.encode_image(self.model.preprocess(x, size), normalize=True).float()
                out[rows] = F.normalize(emb[: len(rows)] + emb[len(rows):], dim=-1) if mirrored else emb
        return out, empty

    def _region_tokens(self, state: ImageState, weights: torch.Tensor, min_cover: float, context: int) -> torch.Tensor:
        """NxGxG per-patch mask areas (original pixels) -> NxGxG bool: patches at least ``min_cover``
        covered (or the most covered one when none is), grown by ``context`` rings inside the image."""
        h, w = state.input_size
        patch_area = (self.patch_size * state.original_size[0] / h) * (self.patch_size * state.original_size[1] / w)
        return covered_tokens(weights, min_cover * patch_area, context, valid_grid(state.input_size, self.patch_size))

    def _max_embeddings(self, state: ImageState, weights: torch.Tensor, min_cover: float,
                        context: int) -> torch.Tensor:
        """NxGxG per-patch mask areas (none all-zero) -> NxE: the head's max-pool over each mask's tokens."""
        regions = self._region_tokens(state, weights, min_cover, context)
        tokens = self._head_tokens(state)
        with torch.no_grad(), self._autocast():
            return self.model.clip_head.masked_pooled(tokens.expand(len(regions), -1, -1, -1), regions).float()

    def _region_embeddings(self, state: ImageState, weights: torch.Tensor, min_cover: float, context: int,
                           chunk: int = 32) -> torch.Tensor:
        """NxGxG per-patch mask areas (original pixels, none all-zero) -> NxE region-pooled embeddings."""
        regions = self._region_tokens(state, weights, min_cover, context)
        out = []
        with torch.no_grad(), self._autocast():
            for i in range(0, len(regions), chunk):
                self._check_interrupt()
                out.append(self.model.clip_head.region_pooled(state.tokens, regions[i : i + chunk]).float())
        return torch.cat(out)

