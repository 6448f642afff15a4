"""Text -> instances: every instance of a phrase in the current image (``segment_text``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.image_input import frame_to_original
from ..inference.regions import connected_components
from ..prompts import mask_areas, masks_to_boxes
from .checks import check_fraction, check_labels, check_text, checked_flags, label_key
from .labelling import MaskLabelling


@dataclass(eq=False)
class Instance:
    """One text-prompted instance: ``mask`` HxW bool, ``score`` (SAM predicted IoU x the phrase's probability:
    in the CLIP head's read over the mask when verified, else at the prompt point), ``box`` XYXY inclusive
    pixel indices, ``point`` (x, y) prompt, original pixels."""

    mask: np.ndarray
    score: float
    box: tuple[float, float, float, float]
    point: tuple[float, float]
    predicted_iou: float


def is_duplicate(mask: torch.Tensor, kept: Sequence[torch.Tensor] | torch.Tensor, max_iou: float,
                 max_cover: float, *, box: Sequence[float] | None = None,
                 kept_boxes: Sequence[Sequence[float]] | None = None, area: int | None = None,
                 kept_areas: Sequence[int] | None = None) -> bool:
    """HxW bool ``mask`` against the HxW masks ``kept``: IoU with one of them above ``max_iou``, or more than
    ``max_cover`` of the smaller of the two masks inside the other. Intersections are counted inside the overlap of
    the two masks' boxes only (inclusive XYXY, :func:`~samclip.prompts.masks_to_boxes`); boxes and areas may be
    given precomputed (``box`` / ``area`` of ``mask``, ``kept_boxes`` / ``kept_areas``), as segment_text does."""
    if len(kept) == 0:
        return False
    box = masks_to_boxes(mask[None])[0].tolist() if box is None else [float(v) for v in box]
    area = int(mask.sum()) if area is None else int(area)
    if kept_boxes is None:
        kept_boxes = masks_to_boxes(torch.stack(list(kept))).tolist()
    if kept_areas is None:
        kept_areas = mask_areas(torch.stack(list(kept))).tolist()
    for other, other_box, other_area in zip(kept, kept_boxes, kept_areas):
        x0, y0 = int(max(box[0], other_box[0])), int(max(box[1], other_box[1]))
        x1, y1 = int(min(box[2], other_box[2])), int(min(box[3], other_box[3]))
        if x0 > x1 or y0 > y1 or not area or not other_area:
            continue  # disjoint boxes (or an empty mask): no intersection
        inter = int((mask[y0 : y1 + 1, x0 : x1 + 1] & other[y0 : y1 + 1, x0 : x1 + 1]).sum())
        iou = inter / max(area + int(other_area) - inter, 1)
        cover = inter / max(min(area, int(other_area)), 1)
        if iou > max_iou or cover > max_cover:
            return True
    return False


#: where :meth:`Predictor.segment_text` takes its candidate masks from
SEGMENT_TEXT_CANDIDATES: tuple[str, ...] = ("regions", "everything")


@dataclass(eq=False)
class EverythingCandidates:
    """The everything mode's masks of one image with their CLIP-space reads, kept in ``ImageState.tasks`` so that
    every later phrase costs one product with its class table: ``masks`` NxHxW bool (original pixels),
    ``predicted_iou`` N, ``points`` Nx2 (x, y) prompt of each mask (original pixels), ``embeddings`` NxE
    normalised, ``empty`` N bool."""

    masks: torch.Tensor
    predicted_iou: torch.Tensor
    points: torch.Tensor
    embeddings: torch.Tensor
    empty: torch.Tensor


class TextInstances(MaskLabelling):
    """``segment_text``: candidate masks (the phrase's coarse regions, or the everything mode's masks) named by
    their CLIP-head read, de-duplicated."""

    @checked_flags
    def segment_text(self, phrase: str, *, vocabulary: Sequence[str] | None = None, threshold: float = 0.5,
                     templates: Sequence[str] | None = None, dedupe_iou: float = 0.7, dedupe_cover: float = 0.5,
                     verify: bool = True, tta: bool | None = None, candidates: str = "regions",
                     pooling: str | None = None) -> list[Instance]:
        """Instances of ``phrase`` in the current image.

        ``candidates="regions"`` (default, one pass): semantic map over ``[phrase, *vocabulary]`` + background (the
        vocabulary acts as distractors) at the low-res mask resolution 4Gx4G; connected regions (8-connectivity)
        where the phrase wins and its probability exceeds ``threshold`` (regions smaller than a quarter patch are
        dropped); one foreground point per region at its probability peak; SAM head (multimask, best by predicted
        IoU). ``verify`` (default): each mask is read again by the CLIP head over the mask itself
        (:meth:`mask_embeddings` with ``pooling``, default ``"auto"``, and ``tta`` as in :meth:`semantic_segment`)
        against the phrase, the vocabulary and the background, and kept only where the phrase wins; the score is
        then the predicted IoU times the phrase's probability in that read. On the shipped model, on two val sets
        of 100 scenes (every shape in turn as the phrase, the other 11 as vocabulary; a hit: mask IoU > 0.5), it
        lifts precision from 23 / 23% to 57 / 59% and F1 from 34 / 34 to 54 / 57, while recall falls from 66 /
        62% to 52 / 54% (docs/experiments.md); with mean pooling, the read of a version-1 ONNX export, F1 34 -> 42
        on the first set.

        ``candidates="everything"`` (NOT one pass by default): the candidates are :meth:`generate`'s masks (its
        defaults), each named by its read (``pooling``, default ``"zoom+crop"``: max pooling on the pass over
        the mask's zoom window plus a small pass over its crop, :meth:`mask_embeddings`; ``"auto"`` under ONNX)
        against the phrase, the vocabulary and the background; the masks the phrase wins are kept (``verify``
        must be on, ``threshold`` is not used). The masks and their reads are computed once per image and kept,
        so further phrases on the same image cost a product with their class table. On the same two val sets:
        precision / recall / F1 60.4 / 67.3 / 63.7 and 66.3 / 63.2 / 64.7 (with ``"max+crop"``, the default
        before session 19: 57.7 / 63.0 / 60.2 and 64.6 / 61.4 / 63.0) vs 60.1 / 51.6 / 55.5 and 62.8 / 53.9 /
        58.0 with regions; 0.36 vs 0.10 s per image for all 12 phrases on 2 CPU cores. With regions,
        ``pooling="zoom"`` verifies better too (F1 61.0 and 60.4; 0.3 s per image), at one pass per region.

        Either way instances are sorted by score; empty masks and duplicates of a better-scored instance are
        dropped: mask IoU > ``dedupe_iou``, or more than ``dedupe_cover`` of the smaller of the two masks inside
        the other (parts of one object prompted from two regions; val F1 54.3 / 56.5 -> 55.5 / 58.0 on the two
        sets with 0.5 vs IoU alone, precision +3.5 / +3.8, recall -0.6 / -0.3 points).
        """
        self._require_clip("segment_text")
        check_text(phrase, "phrase")
        for name, value in (("threshold", threshold), ("dedupe_iou", dedupe_iou), ("dedupe_cover", dedupe_cover)):
            check_fraction(value, name)
        if candidates not in SEGMENT_TEXT_CANDIDATES:
            raise ValueError(f"candidates must be one of {SEGMENT_TEXT_CANDIDATES}, got {candidates!r}")
        if candidates == "everything" and not verify:
            raise ValueError("candidates='everything' names every mask by its read: verify=False does not apply")
        vocab = [] if vocabulary is None else check_labels(vocabulary, "vocabulary")
        labels = [phrase, *[v for v in vocab if label_key(v) != label_key(phrase)]]  # the phrase competes once
        if candidates == "everything":
            masks, pred_iou, points, phrase_prob = self._everything_candidates(labels, templates, tta, pooling)
        else:
            found = self._region_candidates(labels, templates, threshold, verify, tta, pooling or "auto")
            if found is None:
                return []
            masks, pred_iou, points, phrase_prob = found
        scores = pred_iou * phrase_prob
        boxes = masks_to_boxes(masks)
        box_list, areas = boxes.tolist(), mask_areas(masks).tolist()
        kept: list[int] = []
        for k in torch.argsort(scores, descending=True, stable=True).tolist():
            if not areas[k] or (verify and phrase_prob[k] == 0):
                continue
            if is_duplicate(masks[k], [masks[j] for j in kept], dedupe_iou, dedupe_cover, box=box_list[k],
                            kept_boxes=[box_list[j] for j in kept], area=areas[k],
                            kept_areas=[areas[j] for j in kept]):
                continue
            kept.append(k)
        return [Instance(mask=masks[k].cpu().numpy(), score=float(scores[k]),
                         box=tuple(float(v) for v in boxes[k]), point=tuple(float(v) for v in points[k]),
                         predicted_iou=float(pred_iou[k])) for k in kept]

    def _phrase_probability(self, logits: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
        """Nx(1+K) logits of background + labels (the phrase first) -> N: the phrase's probability where it wins
        the read, else 0."""
        read = logits.softmax(-1)
        return torch.where((read.argmax(-1) == 1) & ~empty, read[:, 1], 0.0)

    def _region_candidates(self, labels: list[str], templates: Sequence[str] | None, threshold: float, verify: bool,
                           tta: bool | None, pooling: str,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """One SAM-head mask per coarse-map region of the phrase (``labels[0]``) -> (NxHxW masks, predicted IoU N,
        prompt points Nx2 original pixels, the phrase's probability N), or None when no region is found."""
        state = self.state
        # the CLIP-head map at the model's semseg size covers the same frame as the SAM-size pass
        probs = self._class_logits(self._clip_state(None, "semseg"), labels, templates, True).softmax(0)
        low = 4 * state.grid
        lh, lw = self._low_res_valid(state, low)
        probs = F.interpolate(probs[None], (low, low), mode="bilinear", align_corners=False)[0, :, :lh, :lw]
        region = (probs.argmax(0) == 1) & (probs[1] > threshold)
        comp, n = connected_components(region.cpu().numpy())
        comp_t = torch.from_numpy(comp).to(probs.device)
        cell = state.frame / low
        min_cells = max(1, int((self.patch_size / cell) ** 2 / 4))
        h, w = state.input_size
        points, peaks = [], []
        for r in range(1, n + 1):
            inside = comp_t == r
            if int(inside.sum()) < min_cells:
                continue
            idx = int(torch.where(inside, probs[1], -1.0).flatten().argmax())
            i, j = divmod(idx, lw)
            points.append([min((j + 0.5) * cell, w - 1), min((i + 0.5) * cell, h - 1)])
            peaks.append(float(probs[1, i, j]))
        if not points:
            return None
        coords = torch.tensor(points, dtype=torch.float32, device=self.device)
        _, pred_iou, masks = self._single_point_masks(state, coords)
        phrase_prob = torch.tensor(peaks, device=self.device)
        if verify:
            phrase_prob = self._phrase_probability(*self._mask_class_logits(masks, labels, templates, tta, pooling))
        return masks, pred_iou, frame_to_original(coords, state.original_size, state.input_size), phrase_prob

    def _everything_candidates(self, labels: list[str], templates: Sequence[str] | None, tta: bool | None,
                               pooling: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The everything mode's masks (with their reads cached on the image) -> (NxHxW masks, predicted IoU N,
        prompt points Nx2 original pixels, the phrase's probability N)."""
        if pooling is None:
            pooling = "zoom+crop" if self._onnx is None else "auto"
        tta = self._mask_tta(tta)
        key = ("everything", pooling, tta)
        found = self.state.tasks.get(key)
        if found is None:
            records = self.generate()
            h, w = self.state.original_size
            masks = torch.from_numpy(np.stack([r["segmentation"] for r in records])) if records else \
                torch.zeros(0, h, w, dtype=torch.bool)
            emb, empty = self.mask_embeddings(masks, pooling=pooling, tta=tta)
            found = EverythingCandidates(
                masks.to(self.device), torch.tensor([r["predicted_iou"] for r in records], device=self.device),
                torch.tensor([r["point_coords"][0] for r in records], dtype=torch.float32).reshape(-1, 2), emb, empty)
            self.state.tasks[key] = found
        logits = self._logit_scale() * found.embeddings @ self._class_table(labels, templates).T
        return found.masks, found.predicted_iou, found.points, self._phrase_probability(logits, found.empty)
