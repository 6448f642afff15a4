"""Zero-shot semantic segmentation: the CLIP head's per-patch map, refined by the SAM head."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.image_input import valid_grid
from ..inference.regions import peak_points
from .base import NEG, POSTPROCESS_BATCH
from .checks import check_fraction, check_int, check_labels, checked_flags
from .labelling import MaskLabelling
from .state import ImageState

_LOW_RES_OUTSIDE = -20.0  # mask-input logit for the padding outside the image
#: relabelled refinement: SAM-head masks with a lower predicted IoU are dropped (val: +0.35 mIoU over none)
REFINE_MIN_IOU = 0.5
#: the ``crop_margin`` of :meth:`Predictor.semantic_segment` that ``samclip eval``'s row (d+) uses (chosen on two
#: val sets of 100 scenes: 0.5 / 0.7 / 0.9 gave 51.7 / 53.1 / 52.3 and 54.6 / 55.2 / 55.6 mIoU, 0: 48.9 / 53.0)
SEMSEG_CROP_MARGIN = 0.7


@dataclass(eq=False)
class SemanticResult:
    """Semantic segmentation at the original size.

    ``label_map`` HxW int64: 0 = background, ``i + 1`` = ``labels[i]``.
    ``logits`` (K+1)xHxW float32 (None when asked for the map alone, ``return_logits=False``), the per-class
    scores whose argmax is ``label_map`` (row 0 =
    background): without refinement, CLIP logits ``exp(logit_scale) * cos(patch, text)`` (softmax over
    axis 0 gives class probabilities, :attr:`probs`); with refinement, the SAM head's refined mask logits
    of each present class, row 0 = ``mask_threshold`` (a pixel is background where no class is
    positive) and ``NEG`` for classes that were not refined. Row 0 is ``NEG`` when ``background=False``.
    ``names``: ``["background", *labels]``.
    """

    label_map: np.ndarray
    logits: np.ndarray | None
    names: list[str]
    refined: bool = False

    @property
    def probs(self) -> np.ndarray:
        """Softmax of :attr:`logits` over the class axis (meaningful for the coarse, CLIP logits)."""
        if self.logits is None:
            raise ValueError("this result holds the label map alone (semantic_segment(return_logits=False))")
        z = self.logits - self.logits.max(axis=0, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=0, keepdims=True)


#: classes made at the original size at a time by semantic_segment(return_logits=False)
ARGMAX_CHUNK = 4


def _argmax_in_chunks(maps: Callable[[slice], torch.Tensor], n: int) -> torch.Tensor:
    """The HxW argmax over ``n`` classes whose maps ``maps(rows)`` makes a few at a time (``ARGMAX_CHUNK`` x HxW),
    keeping a running maximum: the first class wins ties, as ``max(0)`` does."""
    best = index = None
    for start in range(0, n, ARGMAX_CHUNK):
        values, idx = maps(slice(start, start + ARGMAX_CHUNK)).max(0)
        idx += start
        if best is None:
            best, index = values, idx
        else:
            better = values > best
            best = torch.where(better, values, best)
            index = torch.where(better, idx, index)
    return index


class SemanticSegmentation(MaskLabelling):
    """``semantic_segment``: a class map of the current image, coarse or refined."""

    @checked_flags
    def semantic_segment(self, labels: Sequence[str], refine: bool = False, *, background: bool = True,
                         threshold: float = 0.5, max_points: int = 3, templates: Sequence[str] | None = None,
                         size: int | None = None, relabel: bool | None = None,
                         tta: bool | None = None, crop_margin: float = 0.0,
                         return_logits: bool = True) -> SemanticResult:
        """Semantic segmentation of the current image into ``labels`` (+ background) at the original size.

        Coarse (CLIP head): per-patch embeddings of the cached pass against the class embeddings and
        a background class (:data:`BACKGROUND_PROMPTS`, averaged) that competes in the softmax; logits
        are upsampled to the frame, cropped to the image and resized to (H, W); argmax.

        ``refine=True``: the SAM head draws the masks. For every non-background class present in the
        coarse map, up to ``max_points`` separated patch-centre points of highest class probability (the
        first one always; further ones only where the probability exceeds ``threshold``). Then:
          - ``relabel=True`` (what ``None`` means where the head's tokens are at hand: PyTorch, or an ONNX
            export of format version 2): each point alone goes to the
            SAM head (multimask, the output with the best predicted IoU); each mask is re-classified by the
            CLIP head over its own tokens (:meth:`mask_embeddings`, ``pooling="auto"``) against the labels and
            the background class;
            masks re-classified as background, or with predicted IoU below ``REFINE_MIN_IOU``, are dropped.
            A pixel takes the class whose masks have the highest logit there. ``tta`` (``None``: on when
            the model's classification has TTA) pools each mask also on the mirrored image's pass (one extra
            backbone pass, cached; also under ONNX: the same frame). ``crop_margin`` > 0 (off by default; NOT one
            pass): a mask whose read is unsure (top class probability minus the runner-up's below
            ``crop_margin``) is named by its read and its crop's together (:meth:`mask_embeddings` with
            ``pooling="max+crop"``: one small pass of the merged model at ``clip_size`` per such mask). On
            the shipped model ``crop_margin=0.7`` crops about a third of the masks and scores 53.1 / 55.2 val
            mIoU vs 48.9 / 53.0 (docs/experiments.md). PyTorch only.
          - ``relabel=False`` (what ``None`` means for an ONNX export of format version 1, whose mask reads are
            mean pooling: re-naming by it scored 36.4 val mIoU vs 39.3 as published, and 46.2 by max
            pooling): SAM-CLIP's composition
            as published: one decode per class with all its points plus the coarse class map as mask logits
            (log-odds of its probability, resized to the 4Gx4G mask-input size), single-mask output; the pixel
            takes the class with the highest refined logit.
        Either way a pixel is background where no class logit is above ``mask_threshold`` (with
        ``background=False`` such pixels keep their coarse class). ``background=False`` drops the
        background class from the competition. On the shipped model relabelling scores 46.2 / 49.8 mIoU
        on two disjoint val sets of 100 scenes vs 39.3 / 43.0 as published, 48.9 / 53.0 with ``tta``
        (docs/experiments.md): the coarse map places the prompts well but names the objects worse than the
        head's read over a whole SAM mask.
        With refinement the coarse map is the head's read over ``refine_pool`` windows
        (:class:`~samclip.models.ClipHeadConfig`; 0: the per-patch map itself): a window that covers whole
        objects places the prompts better than single-token reads, which draw the sharper map without SAM.
        The CLIP-head map comes from the pass at ``size`` (default: the model's ``semseg_size``), the SAM
        head always decodes on the cached SAM-size pass; points and mask input are mapped between frames.

        ``return_logits=False``: the label map alone (``logits`` None), made a few classes at a time at the
        original size, so memory does not grow with labels x pixels (the full logits of 255 labels on a 40 Mpx
        image are 41 GB); the same map.
        """
        self._require_clip("semantic_segment")
        labels = check_labels(labels)
        check_int(max_points, "max_points", 1)
        check_fraction(threshold, "threshold")
        check_fraction(crop_margin, "crop_margin")
        if relabel is None:
            relabel = self._reads_head_tokens
        if crop_margin and self._onnx is not None:
            raise ValueError("crop_margin re-encodes crops with the PyTorch model; an ONNX predictor has one frame")
        if crop_margin and not refine:
            raise ValueError("crop_margin re-reads the refinement's masks: it needs refine=True")
        if crop_margin and not relabel:
            raise ValueError("crop_margin re-reads the relabelled refinement's masks: it needs relabel=True")
        state = self.state
        clip_state = self._clip_state(size, "semseg")
        names = ["background", *labels]
        grid_logits = self._class_logits(clip_state, labels, templates, background, refine)
        if return_logits:
            logits = self._grid_to_original(grid_logits, clip_state)
            label_map = logits.max(0).indices  # = argmax(0), ~5x faster on CPU over the leading dim
        else:
            logits, label_map = None, _argmax_in_chunks(
                lambda rows: self._grid_to_original(grid_logits[rows], clip_state), len(names))
        present = torch.bincount(label_map.flatten(), minlength=len(names))[1:].nonzero()[:, 0].add(1).tolist() \
            if refine else []  # the classes on the map (a count, not unique()'s sort of every pixel)
        if not present:
            return SemanticResult(label_map.cpu().numpy(), None if logits is None else logits.cpu().numpy(), names,
                                  refined=refine)

        probs = grid_logits.softmax(0)  # over clip_state's grid (its whole padded frame)
        gh, gw = valid_grid(clip_state.input_size, self.patch_size)
        h, w = state.input_size
        p = self.patch_size * state.frame / clip_state.frame  # a CLIP-state patch in SAM-frame pixels
        radius = max(1, round(max(gh, gw) / 8))
        peaks = [[(c, min((j + 0.5) * p, w - 1), min((i + 0.5) * p, h - 1))
                  for i, j in peak_points(probs[c, :gh, :gw], threshold, max_points, radius)] for c in present]
        if relabel:
            ids, maps = self._relabelled_masks([pt for per_class in peaks for pt in per_class], labels, templates,
                                               background, tta, crop_margin)
        else:
            ids, maps = self._published_refinement(peaks, present, probs)
        thr = self.model.mask_threshold
        # the classes with refined logits, after row 0 (background: the threshold); every other class is NEG
        rows = torch.cat([torch.full((1, *state.original_size), thr if background else NEG, device=maps.device),
                          maps])
        new_map = torch.tensor([0, *ids], device=rows.device)[rows.max(0).indices]
        if not background:
            new_map = torch.where(maps.max(0).values > thr, new_map, label_map) if len(ids) else label_map
        out = None
        if return_logits:
            out = torch.full((len(names), *state.original_size), NEG, device=rows.device)
            out[[0, *ids]] = rows
        return SemanticResult(new_map.cpu().numpy(), None if out is None else out.cpu().numpy(), names,
                              refined=True)

    def _grid_to_original(self, maps: torch.Tensor, state: ImageState) -> torch.Tensor:
        """CxGxG maps over the padded frame -> CxHxW: upsample to the frame, crop the image, resize."""
        h, w = state.input_size
        up = F.interpolate(maps[None].float(), (state.frame, state.frame), mode="bilinear", align_corners=False)
        if (h, w) == tuple(state.original_size):  # a resize to the same size is the identity
            return up[0, :, :h, :w].contiguous()
        return F.interpolate(up[..., :h, :w], state.original_size, mode="bilinear", align_corners=False)[0]

    def _published_refinement(self, peaks: list[list[tuple[int, float, float]]], present: list[int],
                              probs: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        """SAM-CLIP's composition: per present class one single-mask decode of its points (SAM-frame (c, x, y))
        with its coarse probability map (``probs`` (K+1)xGxG) as mask input -> (the refined classes, their
        refined logits RxHxW)."""
        state = self.state
        max_points = max(len(per_class) for per_class in peaks)
        coords = torch.zeros(len(present), max_points, 2)
        point_labels = -torch.ones(len(present), max_points, dtype=torch.long)
        for n, per_class in enumerate(peaks):
            for m, (_, x, y) in enumerate(per_class):
                coords[n, m] = torch.tensor([x, y])
                point_labels[n, m] = 1
        low = 4 * state.grid
        mask_in = torch.logit(probs[present].clamp(1e-4, 1 - 1e-4))[:, None]
        mask_in = F.interpolate(mask_in, (low, low), mode="bilinear", align_corners=False)
        lh, lw = self._low_res_valid(state, low)
        mask_in[..., lh:, :] = _LOW_RES_OUTSIDE
        mask_in[..., :, lw:] = _LOW_RES_OUTSIDE
        low_logits, _ = self._decode(state, coords.to(self.device), point_labels.to(self.device), None,
                                     mask_in.to(self.device), False)
        refined = self.model.postprocess_masks(low_logits, state.input_size, state.original_size)[:, 0]
        return list(present), refined

    def _relabelled_masks(self, points: list[tuple[int, float, float]], labels: list[str],
                          templates: Sequence[str] | None, background: bool, tta: bool | None,
                          crop_margin: float = 0.0) -> tuple[list[int], torch.Tensor]:
        """One multimask decode per SAM-frame point (c, x, y) -> best mask by predicted IoU -> re-classified
        by the CLIP head over the mask (unsure ones also over their crops, ``crop_margin``) -> (the classes that
        got a mask, ascending; per such class the max logit of its masks, RxHxW)."""
        state = self.state
        coords = torch.tensor([[x, y] for _, x, y in points], dtype=torch.float32, device=self.device)
        low, pred_iou, masks = self._single_point_masks(state, coords)
        tta = self._mask_tta(tta)
        emb, empty = self.mask_embeddings(masks.cpu().numpy(), tta=tta)
        table = self._class_table(labels, templates)
        scores = self._logit_scale() * emb @ table.T
        if not background:
            scores[:, 0] = NEG
        if crop_margin:
            top2 = scores.softmax(-1).topk(2, dim=-1).values
            unsure = ((top2[:, 0] - top2[:, 1]) < crop_margin) & ~empty & (pred_iou >= REFINE_MIN_IOU)
            if bool(unsure.any()):  # pooling="max+crop" for these, reusing their max read
                crops, _ = self._crop_embeddings(masks[unsure], mirrored=tta)
                both = self._logit_scale() * F.normalize(emb[unsure] + crops, dim=-1) @ table.T
                if not background:
                    both[:, 0] = NEG
                scores[unsure] = both
        classes = scores.argmax(-1)
        classes[empty | (pred_iou < REFINE_MIN_IOU)] = 0
        ids = sorted({c for c in classes.tolist() if c > 0})
        out = torch.full((len(ids), *state.original_size), NEG, device=low.device)
        for row, c in enumerate(ids):  # each class's masks at full size, a few at a time
            for part in (classes == c).nonzero()[:, 0].split(POSTPROCESS_BATCH):
                self._check_interrupt()
                out[row] = torch.maximum(out[row], self._full_size_logits(state, low[part])[:, 0].amax(0))
        return ids, out

