"""One predictor for every task of the merged model, served from ONE backbone pass per image.

    predictor = Predictor(samclip.load_model("tiny-synthetic"))
    predictor.set_image(image)                      # HxWx3 uint8 RGB; the only backbone pass
    masks, scores, low_res = predictor.predict(point_coords=[[120, 80]], point_labels=[1])
    probs = predictor.classify(["star", "ring", "heart"])
    sem = predictor.semantic_segment(["star", "ring"], refine=True)
    inst = predictor.segment_text("star", vocabulary=["ring", "heart"])
    everything = predictor.generate(vocabulary=["star", "ring", "heart"])

Conventions (see :mod:`samclip.inference.image_input`):

- The image is resized so its longest side is the model's native frame ``S`` (segment-anything's
  ``ResizeLongestSide``) and padded bottom/right to SxS. ``original_size = (H, W)``; ``input_size = (h, w)``.
- Every coordinate in this API is an (x, y) pixel position of the ORIGINAL image (X first; integer
  values are pixel indices, the prompt encoder adds 0.5 for the pixel centre). Boxes are XYXY.
  Points and boxes outside the image are clipped into it (x to [0, W-1], y to [0, H-1]).
- Masks come back at the original size; low-resolution logits are 4Gx4G for a GxG token grid and
  cover the whole padded frame (feed them back as ``mask_input``).
- ``bf16=True`` runs the networks under bfloat16 autocast, and on CPUs the prompt decodes in bf16 for
  everything image-sized with the prompt tokens' small products in fp32; outputs are float32. The default (``None``)
  uses it only where it is fast (GPUs, CPUs with AMX / AVX512-BF16; see :mod:`samclip.precision`).

Works on a merged :class:`~samclip.models.SamClip` (all tasks) or a plain :class:`~samclip.models.Sam`
(SAM tasks: ``predict``, ``predict_torch``, ``generate`` without vocabulary); CLIP tasks on a plain SAM
raise ``ValueError``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data.captions import class_prompt_templates, fix_articles
from .inference.crops import mask_crops
from .inference.everything import box_nms, box_xyxy_to_xywh, build_point_grid, stability_score
from .inference.image_input import (
    REGION_CONTEXT,
    REGION_MIN_COVER,
    clip_points,
    covered_tokens,
    frame_to_original,
    mask_to_grid_weights,
    original_to_frame,
    preprocess_shape,
    resize_uint8,
    to_rgb_uint8,
    valid_grid,
)
from .inference.regions import connected_components, peak_points
from .models.mask_decoder import FirstLayerImage
from .models.sam import Sam
from .models.samclip import Features, SamClip
from .precision import autocast, resolve_bf16
from .prompts import masks_to_boxes

#: prompts of the explicit background class of :meth:`Predictor.semantic_segment` (used verbatim, averaged)
BACKGROUND_PROMPTS: tuple[str, ...] = (
    "background", "a plain background", "an empty background", "a textured background",
)
NEG = -1.0e4  # logit of a class that cannot win (finite, so softmax stays defined)
_LOW_RES_OUTSIDE = -20.0  # mask-input logit for the padding outside the image
#: relabelled refinement: SAM-head masks with a lower predicted IoU are dropped (val: +0.35 mIoU over none)
REFINE_MIN_IOU = 0.5
#: the ``pooling`` choices of :meth:`Predictor.mask_embeddings` / :meth:`Predictor.label_masks`
MASK_POOLINGS: tuple[str, ...] = ("auto", "max", "region", "mean", "crop", "max+crop")
#: the ``crop_margin`` of :meth:`Predictor.semantic_segment` that ``samclip eval``'s row (d+) uses (chosen on two
#: val sets of 100 scenes: 0.5 / 0.7 / 0.9 gave 51.7 / 53.1 / 52.3 and 54.6 / 55.2 / 55.6 mIoU, 0: 48.9 / 53.0)
SEMSEG_CROP_MARGIN = 0.7


# ------------------------------------------------------------------------------------------ results
@dataclass(eq=False)
class DecoderInputs:
    """The image side of prompt decodes in one dtype: ``embeddings``, the image embeddings cast to it (None
    where they already are in it), and ``first_layer``, the mask decoder's first-layer view of them
    (:meth:`Sam.decoder_image_cache`, made at the first decode without a mask input)."""

    embeddings: torch.Tensor | None = None
    first_layer: FirstLayerImage | None = None


@dataclass(eq=False)
class ImageState:
    """Everything cached from one backbone pass over one image.

    ``sam_embeddings`` 1xCxGxG (SAM head input); ``tokens`` 1xGxGxD backbone tokens (None for a plain
    SAM); CLIP-head outputs are filled in lazily on first use and reused afterwards. ``image`` is the
    validated HxWx3 uint8 input, kept for passes at another size (``classify(size=...)``) or of the mirrored
    image (test-time augmentation), cached in ``other_sizes`` by (frame, mirrored).
    """

    image: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    frame: int
    sam_embeddings: torch.Tensor
    tokens: torch.Tensor | None
    head_tokens: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    patch_embeddings: torch.Tensor | None = None
    refine_embeddings: torch.Tensor | None = None  # per-patch read at the head's refine_pool, when it differs
    decoder: dict[torch.dtype, DecoderInputs] = field(default_factory=dict)  # per decode dtype, on first decode
    other_sizes: dict[tuple[int, bool], ImageState] = field(default_factory=dict)

    @property
    def grid(self) -> int:
        return self.sam_embeddings.shape[-1]


@dataclass(eq=False)
class SemanticResult:
    """Semantic segmentation at the original size.

    ``label_map`` HxW int64: 0 = background, ``i + 1`` = ``labels[i]``.
    ``logits`` (K+1)xHxW float32, the per-class scores whose argmax is ``label_map`` (row 0 =
    background): without refinement, CLIP logits ``exp(logit_scale) * cos(patch, text)`` (softmax over
    axis 0 gives class probabilities, :attr:`probs`); with refinement, the SAM head's refined mask logits
    of each present class, row 0 = ``mask_threshold`` (a pixel is background where no class is
    positive) and ``NEG`` for classes that were not refined. Row 0 is ``NEG`` when ``background=False``.
    ``names``: ``["background", *labels]``.
    """

    label_map: np.ndarray
    logits: np.ndarray
    names: list[str]
    refined: bool = False

    @property
    def probs(self) -> np.ndarray:
        """Softmax of :attr:`logits` over the class axis (meaningful for the coarse, CLIP logits)."""
        z = self.logits - self.logits.max(axis=0, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=0, keepdims=True)


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


# ---------------------------------------------------------------------------------------- helpers
def _duplicate(mask: torch.Tensor, kept: torch.Tensor, max_iou: float, max_cover: float) -> bool:
    """HxW bool ``mask`` against NxHxW ``kept``: IoU with one of them above ``max_iou``, or more than
    ``max_cover`` of the smaller of the two masks inside the other."""
    inter = (kept & mask).flatten(1).sum(1).float()
    areas, area = kept.flatten(1).sum(1).float(), mask.sum().float()
    iou = inter / (areas + area - inter).clamp(min=1)
    cover = inter / torch.minimum(areas, area).clamp(min=1)
    return bool(((iou > max_iou) | (cover > max_cover)).any())


def _check_labels(labels: Any, what: str = "labels") -> list[str]:
    if isinstance(labels, str):
        raise ValueError(f"{what} must be a list of strings, not a single string; pass [{labels!r}]")
    try:
        out = list(labels)
    except TypeError as err:
        raise ValueError(f"{what} must be a list of strings, got {type(labels).__name__}") from err
    if not out:
        raise ValueError(f"{what} is empty; pass at least one class name")
    seen: set[str] = set()
    for label in out:
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"every entry of {what} must be a non-empty string, got {label!r}")
        if label in seen:
            raise ValueError(f"duplicate label {label!r} in {what}")
        seen.add(label)
    return out


def _check_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    if templates is None:
        return tuple(class_prompt_templates())
    if isinstance(templates, str):
        templates = [templates]
    out = tuple(templates)
    if not out:
        raise ValueError("templates is empty; pass None for the default templates")
    for t in out:
        if not isinstance(t, str) or "{}" not in t:
            raise ValueError(f"every template must be a string containing '{{}}', got {t!r}")
        try:
            t.format("x")
        except (IndexError, KeyError, ValueError) as err:
            raise ValueError(f"template {t!r} must contain exactly one '{{}}' placeholder") from err
    return out


def _content_key(name: str, prompts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([name, list(prompts)]).encode("utf-8")).hexdigest()


def _float_tensor(x: Any, name: str) -> torch.Tensor:
    """Array-like -> float64 CPU tensor; ValueError for non-numeric or non-finite input."""
    try:
        t = x.detach().cpu().double() if isinstance(x, torch.Tensor) else torch.from_numpy(
            np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got {type(x).__name__}") from err
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


# -------------------------------------------------------------------------------------- predictor
class Predictor:
    """SAM's ``SamPredictor`` API plus CLIP tasks, all from one cached backbone pass per image.

    Args:
        model: a merged :class:`SamClip` (every task) or a plain :class:`Sam` (SAM tasks only); it is
            put in eval mode. Inputs go to the device of its parameters.
        bf16: run the networks under bfloat16 autocast, on CPUs the prompt decodes with bf16 image tokens and
            fp32 prompt tokens (all fp32 for little image-sized work, ``mixed_decode_min_elements``; outputs
            are float32); ``None``: only where the
            device multiplies bf16 natively (elsewhere bf16 is emulated and many times slower than fp32).
        backend: ``"torch"`` (default) or ``"onnx"``: the image graphs (backbone + SAM neck; the CLIP head,
            run when a CLIP task first reads the image) and the prompt decoder run on onnxruntime from
            ``onnx_dir`` (written by ``samclip export onnx`` from this model); the text tower, pre- and
            post-processing and the mask poolings' LayerNorm / MLP stay in PyTorch. See :meth:`from_onnx`.
    """

    # with bf16, a decode call runs in bf16 (mixed) from this many image-embedding elements (C x h x w) times
    # prompts up, in fp32 below: on a 2-core AMX CPU one prompt took 2.5 vs 2.25 ms fp32 on tiny-synthetic's
    # 96x16x16, 5.7 vs 6.0 ms on SAM ViT-B's 256x28x28 (448 px) and 7.7 vs 9.9 ms at 640 px; 256 prompts on
    # tiny-synthetic 74-79 vs 122-130 ms
    mixed_decode_min_elements = 1 << 17

    def __init__(self, model: SamClip | Sam, *, bf16: bool | None = None, backend: str = "torch",
                 onnx_dir: Any = None) -> None:
        if not isinstance(model, SamClip | Sam):
            raise TypeError(f"Predictor needs a SamClip or Sam model, got {type(model).__name__}")
        self.model = model.eval()
        self.has_clip = isinstance(model, SamClip)
        self.backend = backend
        self._onnx = self._onnx_engine(backend, onnx_dir)
        sam_cfg = model.sam.config if isinstance(model, SamClip) else model.config
        self.patch_size = sam_cfg.image_encoder.patch_size
        self.device = next(model.parameters()).device
        self.bf16 = resolve_bf16(bf16, self.device)
        self._states: list[ImageState] = []
        self._state: ImageState | None = None
        self._text_cache: dict[str, torch.Tensor] = {}
        self._text_hits = 0
        self._text_misses = 0

    @classmethod
    def from_onnx(cls, onnx_dir: Any, model: SamClip | None = None, **kwargs: Any) -> Predictor:
        """A predictor on an ONNX export; ``model`` (for the text tower) defaults to the model the export
        was made from (the name or folder recorded in its manifest)."""
        if model is None:
            from .export.onnx_runtime import read_manifest
            from .factory import load_model

            source = read_manifest(onnx_dir).get("source")
            if not source:
                raise ValueError(f"{onnx_dir} was exported from an in-memory model; pass model=... (its text tower "
                                 "is needed for the CLIP tasks)")
            model = load_model(source)
        return cls(model, backend="onnx", onnx_dir=onnx_dir, **kwargs)

    def _onnx_engine(self, backend: str, onnx_dir: Any) -> Any:
        """None for the PyTorch path; the onnxruntime engine for ``backend="onnx"``."""
        if backend == "torch":
            if onnx_dir is not None:
                raise ValueError("onnx_dir is only used with backend='onnx'")
            return None
        if backend != "onnx":
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        if not self.has_clip:
            raise ValueError("the ONNX backend needs a merged SamClip model (the export holds both heads)")
        if onnx_dir is None:
            raise ValueError("backend='onnx' needs onnx_dir, a folder written by `samclip export onnx`")
        from .export.onnx_runtime import OnnxBackend

        engine = OnnxBackend(onnx_dir)
        engine.check_model(self.model)
        return engine

    # ---------------------------------------------------------------------------------- image
    def set_image(self, image: Any, *, size: int | None = None) -> ImageState:
        """Run the backbone once on ``image`` and cache the result as the current image.

        ``image``: HxWx3 uint8 RGB (see :func:`samclip.inference.to_rgb_uint8` for the accepted
        variants: grayscale, RGBA, uint16, PIL). ``size``: frame size (a multiple of the patch size;
        default the model's native ``img_size``; an ONNX predictor sets images at its export's frame). Returns
        the cached :class:`ImageState`.
        """
        self._check_onnx_set_size(size)
        state = self._encode([image], size, batch_size=1)[0]
        self._states = [state]
        self._state = state
        return state

    def set_images(self, images: Sequence[Any], *, size: int | None = None, batch_size: int = 4) -> list[ImageState]:
        """Batched :meth:`set_image`: encode several images (``batch_size`` per backbone call) and
        return their states in order. The first becomes current; switch with :meth:`select`."""
        if isinstance(images, np.ndarray | torch.Tensor) and np.ndim(images) == 4:
            images = list(images)
        if not isinstance(images, Sequence) or isinstance(images, str) or not images:
            raise ValueError("set_images needs a non-empty list of images")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._check_onnx_set_size(size)
        self._states = self._encode(list(images), size, batch_size)
        self._state = self._states[0]
        return list(self._states)

    def select(self, which: int | ImageState) -> ImageState:
        """Make an image current: an index into the last :meth:`set_images` call, or a returned state."""
        if isinstance(which, ImageState):
            self._state = which
        else:
            if not self._states:
                raise RuntimeError("no images set: call set_images(images) first")
            if not -len(self._states) <= int(which) < len(self._states):
                raise IndexError(f"image index {which} out of range for {len(self._states)} images")
            self._state = self._states[int(which)]
        return self._state

    def reset_image(self) -> None:
        """Drop every cached image."""
        self._states, self._state = [], None

    @property
    def is_image_set(self) -> bool:
        return self._state is not None

    @property
    def state(self) -> ImageState:
        """The current image's cached state; RuntimeError before :meth:`set_image`."""
        if self._state is None:
            raise RuntimeError("no image set: call predictor.set_image(image) before predicting")
        return self._state

    @property
    def original_size(self) -> tuple[int, int]:
        return self.state.original_size

    @property
    def input_size(self) -> tuple[int, int]:
        return self.state.input_size

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _frame_size(self, size: int | None) -> int:
        if size is None:
            return self.model.img_size if self._onnx is None else self._onnx.frame
        if int(size) != size or size < self.patch_size or size % self.patch_size:
            raise ValueError(f"size must be a positive multiple of the patch size {self.patch_size}, got {size}")
        if self._onnx is not None and int(size) not in self._onnx.frames:
            raise ValueError(f"this ONNX export has image graphs for the frames {self._onnx.frames}, not "
                             f"{size}: re-export it (`samclip export onnx` writes the CLIP-head tasks' own sizes "
                             "unless --no-clip-frames), or use the PyTorch backend")
        return int(size)

    def _check_onnx_set_size(self, size: int | None) -> None:
        """An ONNX predictor's images are set at its export's own frame (the prompt decoders' grid)."""
        if self._onnx is not None and size is not None and int(size) != self._onnx.frame:
            raise ValueError(f"an ONNX predictor sets images at its export's frame ({self._onnx.frame} px), got "
                             f"size={size}; export another frame with `samclip export onnx --size`")

    def _encode(self, images: list[Any], size: int | None, batch_size: int) -> list[ImageState]:
        frame = self._frame_size(size)
        arrays = [to_rgb_uint8(im) for im in images]
        states = []
        for start in range(0, len(arrays), batch_size):
            chunk = arrays[start : start + batch_size]
            sizes = [preprocess_shape(a.shape[0], a.shape[1], frame) for a in chunk]
            pixels = torch.cat([
                self.model.preprocess(
                    torch.tensor(resize_uint8(a, hw), device=self.device).permute(2, 0, 1)[None].float(), frame)
                for a, hw in zip(chunk, sizes)
            ])
            extra: list[dict[str, torch.Tensor]] = [{} for _ in chunk]
            if self._onnx is not None:
                emb, tokens, extra = self._onnx_encode(pixels, sizes, frame)
            else:
                with torch.no_grad(), self._autocast():
                    if self.has_clip:
                        feats = self.model.features(pixels)
                        emb, tokens = self.model.sam_embeddings(feats), feats.tokens
                    else:
                        emb, tokens = self.model.image_embeddings(pixels), None
            for i, (a, hw) in enumerate(zip(chunk, sizes)):
                states.append(ImageState(
                    image=a, original_size=(a.shape[0], a.shape[1]), input_size=hw, frame=frame,
                    sam_embeddings=emb[i : i + 1], tokens=None if tokens is None else tokens[i : i + 1], **extra[i],
                ))
        return states

    def _onnx_encode(self, pixels: torch.Tensor, sizes: list[tuple[int, int]], frame: int,
                     ) -> tuple[torch.Tensor, torch.Tensor | None, list[dict[str, torch.Tensor]]]:
        """The ONNX backbone pass per image: SAM embeddings and backbone tokens (format version 2; the CLIP-head
        graph runs later, when a task reads it: :meth:`_head_tokens`), or, from a version-1 export, SAM
        embeddings plus the CLIP head's pooled / per-patch embeddings (no tokens)."""
        embs, tokens, extra = [], [], []
        for i, hw in enumerate(sizes):
            x = pixels[i : i + 1].float().cpu().numpy()
            if self._onnx.has_head_tokens:
                emb, tok = self._onnx.encode_image(x, frame)
                tokens.append(torch.from_numpy(tok).to(self.device))
                extra.append({})
            else:
                out = self._onnx.encode_outputs(x, valid_grid(hw, self.patch_size), frame)
                emb = out["image_embeddings"]
                extra.append({"patch_embeddings": torch.from_numpy(out["patch_embeddings"][0]).to(self.device),
                              "pooled": torch.from_numpy(out["image_embedding_clip"]).to(self.device)})
            embs.append(torch.from_numpy(emb).to(self.device))
        return torch.cat(embs), torch.cat(tokens) if tokens else None, extra

    # ----------------------------------------------------------------------------- SAM prompts
    def predict(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment the current image from one set of prompts (segment-anything's ``SamPredictor.predict``).

        Args:
            point_coords: Nx2 (x, y) original-image pixels (a single (x, y) is accepted too).
            point_labels: N; 1 foreground, 0 background (-1 padding is ignored by the model).
            box: length-4 XYXY in original-image pixels (or 1x4).
            mask_input: 1x4Gx4G low-resolution logits, e.g. ``low_res_logits[i:i+1]`` of a previous call.
            multimask_output: three masks (ambiguous prompts) instead of one.
            return_logits: return mask logits instead of thresholded masks.
        Returns:
            masks CxHxW (bool, or float32 logits), scores C (predicted IoU), low_res_logits Cx4Gx4G;
            C = 3 with ``multimask_output`` else 1.
        """
        pc = pl = None
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                raise ValueError("point_coords and point_labels must be given together")
            pc = _float_tensor(point_coords, "point_coords")
            pl = _float_tensor(point_labels, "point_labels")
            if pc.shape == (2,):
                pc = pc[None]
            pl = pl.reshape(1) if pl.ndim == 0 else pl
            if pc.ndim != 2 or pc.shape[-1] != 2:
                raise ValueError(f"point_coords must be Nx2 (x, y), got shape {tuple(pc.shape)}")
            if pl.ndim != 1 or pl.shape[0] != pc.shape[0]:
                raise ValueError(
                    f"point_labels must have one label per point ({pc.shape[0]}), got shape {tuple(pl.shape)}")
            pc, pl = pc[None], pl[None]
        bx = None
        if box is not None:
            bx = _float_tensor(box, "box")
            if bx.numel() != 4:
                raise ValueError(f"box must be length-4 XYXY, got shape {tuple(bx.shape)}")
            bx = bx.reshape(1, 4)
        mi = None
        if mask_input is not None:
            mi = _float_tensor(mask_input, "mask_input")
            if mi.ndim not in (2, 3, 4) or (mi.ndim > 2 and math.prod(mi.shape[:-2]) != 1):
                raise ValueError(f"mask_input must be 1x4Gx4G low-res logits, got shape {tuple(mi.shape)}")
            mi = mi.reshape(1, 1, *mi.shape[-2:])
        masks, scores, low = self.predict_torch(pc, pl, bx, mi, multimask_output, return_logits)
        return masks[0].cpu().numpy(), scores[0].cpu().numpy(), low[0].cpu().numpy()

    def predict_torch(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        boxes: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prompts on the current image; coordinates in ORIGINAL-image pixels (converted here).

        Args:
            point_coords: BxNx2 (x, y), with point_labels BxN (1 fg, 0 bg, -1 padding).
            boxes: Bx4 XYXY.
            mask_input: Bx1x4Gx4G low-resolution logits.
        Returns:
            masks BxCxHxW (bool, or float32 logits with ``return_logits``), iou predictions BxC,
            low-resolution logits BxCx4Gx4G.
        """
        state = self.state
        coords, labels, boxes_t, masks_t = self._prompt_tensors(state, point_coords, point_labels, boxes, mask_input)
        low, iou = self._decode(state, coords, labels, boxes_t, masks_t, multimask_output)
        masks = self.model.postprocess_masks(low, state.input_size, state.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low

    def _prompt_tensors(self, state: ImageState, point_coords: Any, point_labels: Any, boxes: Any,
                        mask_input: Any) -> tuple[torch.Tensor | None, ...]:
        """Validate batched prompts and map them from original pixels into the input frame."""
        batch: dict[str, int] = {}
        coords = labels = None
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is not None:
            coords = _float_tensor(point_coords, "point_coords")
            labels = _float_tensor(point_labels, "point_labels")
            if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[1] == 0:
                raise ValueError(f"point_coords must be BxNx2 (x, y) with N >= 1, got shape {tuple(coords.shape)}")
            if labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"point_labels must be BxN = {tuple(coords.shape[:2])} (one per point), got {tuple(labels.shape)}")
            if not ((labels == 0) | (labels == 1) | (labels == -1)).all():
                bad = sorted({float(v) for v in labels.unique()} - {0.0, 1.0, -1.0})
                raise ValueError(f"point_labels must be 1 (foreground), 0 (background) or -1 (padding), got {bad}")
            batch["point_coords"] = coords.shape[0]
            coords = original_to_frame(clip_points(coords, state.original_size), state.original_size,
                                       state.input_size).float().to(self.device)
            labels = labels.long().to(self.device)
        boxes_t = None
        if boxes is not None:
            boxes_t = _float_tensor(boxes, "boxes")
            if boxes_t.ndim != 2 or boxes_t.shape[-1] != 4:
                raise ValueError(f"boxes must be Bx4 XYXY, got shape {tuple(boxes_t.shape)}")
            if (boxes_t[:, 2] < boxes_t[:, 0]).any() or (boxes_t[:, 3] < boxes_t[:, 1]).any():
                raise ValueError("boxes must be XYXY with x0 <= x1 and y0 <= y1")
            batch["boxes"] = boxes_t.shape[0]
            corners = clip_points(boxes_t.reshape(-1, 2, 2), state.original_size)
            boxes_t = original_to_frame(corners, state.original_size, state.input_size).reshape(-1, 4)
            boxes_t = boxes_t.float().to(self.device)
        masks_t = None
        if mask_input is not None:
            masks_t = _float_tensor(mask_input, "mask_input")
            low = 4 * state.grid
            if masks_t.ndim != 4 or masks_t.shape[1] != 1 or tuple(masks_t.shape[-2:]) != (low, low):
                raise ValueError(f"mask_input must be Bx1x{low}x{low} low-res logits, got shape {tuple(masks_t.shape)}")
            batch["mask_input"] = masks_t.shape[0]
            masks_t = masks_t.float().to(self.device)
        if len(set(batch.values())) > 1:
            raise ValueError(f"prompt batch sizes differ: {batch}")
        return coords, labels, boxes_t, masks_t

    def _decode(self, state: ImageState, coords: torch.Tensor | None, labels: torch.Tensor | None,
                boxes: torch.Tensor | None, mask_input: torch.Tensor | None,
                multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM head on cached embeddings; prompts already in input-frame pixels. Returns float32."""
        if self._onnx is not None:
            def arr(t: torch.Tensor | None) -> np.ndarray | None:
                return None if t is None else t.detach().float().cpu().numpy()

            low, iou = self._onnx.decode(arr(state.sam_embeddings), arr(coords), arr(labels), arr(boxes),
                                         arr(mask_input), multimask_output)
            return torch.from_numpy(low).to(self.device), torch.from_numpy(iou).to(self.device)
        prompts = next((t.shape[0] for t in (coords, boxes, mask_input) if t is not None), 1)  # none: 1, as SAM
        dtype, decode_autocast = self._decode_precision(state, prompts)
        view = state.decoder.setdefault(dtype, DecoderInputs())
        embeddings = state.sam_embeddings
        if embeddings.dtype != dtype:
            if view.embeddings is None:  # a copy only where the dtypes differ
                view.embeddings = embeddings.to(dtype)
            embeddings = view.embeddings
        with torch.no_grad():
            if mask_input is None and view.first_layer is None:
                # once per image and dtype: the image-sized projections, under autocast wherever bf16 is used
                with autocast(self.device, decode_autocast or dtype == torch.bfloat16):
                    view.first_layer = self.model.decoder_image_cache(embeddings)
            with autocast(self.device, decode_autocast):
                low, iou = self.model.decode(embeddings, coords, labels, boxes, mask_input, multimask_output,
                                             image_cache=view.first_layer)
        return low.float(), iou.float()

    def _decode_precision(self, state: ImageState, prompts: int) -> tuple[torch.dtype, bool]:
        """(dtype of the image embeddings a decode of ``prompts`` prompts runs on, whether under autocast).

        bf16 on a CPU: mixed precision by hand instead of autocast: the image tokens (and every image-sized
        product) in bf16, the prompt tokens' small products with the fp32 weights, where they are faster; calls
        with little image-sized work (one prompt on a tiny model's embeddings) decode in fp32, faster there.
        bf16 on a GPU: autocast (its weight casts are cheap there, and PyTorch's CUDA LayerNorm takes no bf16
        input with fp32 weights)."""
        if not self.bf16:
            return torch.float32, False
        if self.device.type != "cpu":
            return state.sam_embeddings.dtype, True
        mixed = prompts * state.sam_embeddings[0].numel() >= self.mixed_decode_min_elements
        return (torch.bfloat16 if mixed else torch.float32), False

    # ------------------------------------------------------------------------------------ text
    def _require_clip(self, task: str) -> SamClip:
        if not self.has_clip:
            raise ValueError(
                f"{task} needs a CLIP head, but this model ({type(self.model).__name__}) has no CLIP head; "
                "use a merged SamClip model (samclip.load_model)")
        return self.model  # type: ignore[return-value]

    @property
    def _reads_head_tokens(self) -> bool:
        """Whether the CLIP head's tokens are at hand: the PyTorch model, or an ONNX export whose CLIP-head graph
        outputs them (format version 2). Max pooling and the refinement's window read need them; so do the
        defaults that rest on them (relabelling, the mirrored view of mask reads)."""
        return self._onnx is None or self._onnx.has_head_tokens

    @property
    def text_cache_info(self) -> dict[str, int]:
        """Text-embedding cache statistics: ``hits`` / ``misses`` (per class) and ``size`` (entries)."""
        return {"hits": self._text_hits, "misses": self._text_misses, "size": len(self._text_cache)}

    def text_embeddings(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """KxE L2-normalised class embeddings: the mean of the normalised embeddings of every template
        filled with the label (articles fixed, "a apple" -> "an apple"), renormalised. Default templates:
        :func:`samclip.data.class_prompt_templates`. Cached by a content hash of (label, templates)."""
        self._require_clip("text_embeddings")
        labels = _check_labels(labels)
        templates = _check_templates(templates)
        sets = [(_content_key(label, templates), [fix_articles(t.format(label)) for t in templates])
                for label in labels]
        return self._embed_prompt_sets(sets)

    def _background_embedding(self) -> torch.Tensor:
        return self._embed_prompt_sets([(_content_key("<background>", BACKGROUND_PROMPTS), list(BACKGROUND_PROMPTS))])

    def _embed_prompt_sets(self, sets: list[tuple[str, list[str]]], chunk: int = 256) -> torch.Tensor:
        model = self._require_clip("text embeddings")
        missing = {key: prompts for key, prompts in sets if key not in self._text_cache}
        self._text_hits += len(sets) - len(missing)
        self._text_misses += len(missing)
        if missing:
            tokenizer = model.tokenizer
            if tokenizer is None:
                raise ValueError("the model has no tokenizer; attach one (model.tokenizer = ClipTokenizer...)")
            prompts = [p for ps in missing.values() for p in ps]
            parts = []
            with torch.no_grad(), self._autocast():
                for i in range(0, len(prompts), chunk):
                    tokens = tokenizer(prompts[i : i + chunk]).to(self.device)
                    parts.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
            emb = torch.cat(parts)
            start = 0
            for key, ps in missing.items():
                self._text_cache[key] = F.normalize(emb[start : start + len(ps)].mean(0), dim=-1)
                start += len(ps)
        return torch.stack([self._text_cache[key] for key, _ in sets])

    # ------------------------------------------------------------------------- CLIP head (image)
    def _logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().float().exp().clamp(max=100.0)

    def _head_tokens(self, state: ImageState) -> torch.Tensor:
        if state.head_tokens is None and state.tokens is None:
            raise ValueError("this ONNX export's image graph has no head_tokens output (format version 1): "
                             "re-export the model with `samclip export onnx` for max pooling")
        if state.head_tokens is None and self._onnx is not None:  # the CLIP-head graph: all three reads at once
            out = self._onnx.encode_clip(state.tokens.cpu().numpy(), valid_grid(state.input_size, self.patch_size),
                                         state.frame)
            state.head_tokens = torch.from_numpy(out["head_tokens"]).to(self.device)
            state.patch_embeddings = torch.from_numpy(out["patch_embeddings"][0]).to(self.device)
            state.pooled = torch.from_numpy(out["image_embedding_clip"]).to(self.device)
        if state.head_tokens is None:
            with torch.no_grad(), self._autocast():
                state.head_tokens = self.model.clip_tokens(Features(state.tokens, state.frame))
        return state.head_tokens

    def _pooled(self, state: ImageState) -> torch.Tensor:
        """1xE normalised pooled CLIP-head embedding; the max-pool covers only tokens over the image."""
        if state.pooled is None and self._onnx is not None:
            self._head_tokens(state)  # the CLIP-head graph outputs the pooled embedding too
        if state.pooled is None:
            gh, gw = valid_grid(state.input_size, self.patch_size)
            tokens = self._head_tokens(state)[:, :gh, :gw]
            with torch.no_grad(), self._autocast():
                state.pooled = F.normalize(self.model.clip_head.pooled(tokens).float(), dim=-1)
        return state.pooled

    def _patch_read(self, state: ImageState, pool: int | None = None) -> torch.Tensor:
        """GxGxE normalised per-patch embeddings of the cached head tokens over ``pool`` windows (None:
        ``dense_pool``)."""
        tokens = self._head_tokens(state)
        with torch.no_grad(), self._autocast():
            return F.normalize(self.model.clip_head.per_patch(tokens, pool).float(), dim=-1)[0]

    def _patch_embeddings(self, state: ImageState) -> torch.Tensor:
        """GxGxE normalised per-patch CLIP-space embeddings."""
        if state.patch_embeddings is None and self._onnx is not None:
            self._head_tokens(state)  # the CLIP-head graph outputs the per-patch embeddings too
        if state.patch_embeddings is None:
            state.patch_embeddings = self._patch_read(state)
        return state.patch_embeddings

    def _refine_embeddings(self, state: ImageState) -> torch.Tensor:
        """GxGxE normalised per-patch embeddings that place the SAM-head refinement's prompts: the head's read
        over ``refine_pool`` windows (the per-patch map itself when that is 0 or ``dense_pool``, and under an
        ONNX export whose image graph outputs only the per-patch map)."""
        cfg = self.model.clip_head.config if self._reads_head_tokens else None
        if cfg is None or cfg.refine_pool in (0, cfg.dense_pool):
            return self._patch_embeddings(state)
        if state.refine_embeddings is None:
            state.refine_embeddings = self._patch_read(state, cfg.refine_pool)
        return state.refine_embeddings

    def _state_for_size(self, state: ImageState, size: int | None, mirrored: bool = False) -> ImageState:
        """The pass over ``state``'s image at ``size`` (default its own frame), mirrored left-right if asked:
        ``state`` itself, or one extra backbone pass cached in ``state.other_sizes``."""
        frame = state.frame if size is None else self._frame_size(size)
        if frame == state.frame and not mirrored:
            return state
        if (frame, mirrored) not in state.other_sizes:
            image = np.ascontiguousarray(state.image[:, ::-1]) if mirrored else state.image
            state.other_sizes[(frame, mirrored)] = self._encode([image], frame, batch_size=1)[0]
        return state.other_sizes[(frame, mirrored)]

    def _clip_state(self, size: int | None, task: str, mirrored: bool = False) -> ImageState:
        """The pass a CLIP-head task reads: ``size`` if given, else the model's default for the task
        (``config.clip_size`` for classification, ``config.label_size`` (0: ``clip_size``) for max / region
        mask labels, ``config.semseg_size`` for dense maps; the merge picks them on validation data). The
        native SAM-size pass is reused when they match it; otherwise one extra backbone pass at that size is
        made and cached per image. An ONNX predictor reads the same sizes where its export has image graphs at
        them (``samclip export onnx`` writes them), else its own frame."""
        if size is None and isinstance(self.model, SamClip):
            cfg = self.model.config
            size = {"semseg": cfg.semseg_size, "label": cfg.label_size or cfg.clip_size}.get(task, cfg.clip_size)
            if self._onnx is not None and size not in self._onnx.frames:
                size = None
        return self._state_for_size(self.state, size, mirrored)

    def classify(self, labels: Sequence[str], templates: Sequence[str] | None = None, *,
                 size: int | None = None, tta: bool | None = None) -> np.ndarray:
        """Zero-shot classification of the current image -> K probabilities (float32, sum 1).

        ``softmax(exp(logit_scale) * cos(pooled image embedding, class embedding))``. The pooled CLIP-head
        embedding comes from the pass at ``size`` (default: the model's ``clip_size``; the cached SAM-size
        pass itself when they are equal, else one extra backbone pass, cached per image).

        ``tta`` (test-time augmentation; ``None``: on when the model's config has it, as the merge sets it
        when it is better on validation): the embedding is the normalised mean of the pooled embeddings of
        :meth:`SamClipConfig.classify_views` (``size``, then ``tta_sizes``, each also mirrored when
        ``tta_flip``): one extra backbone pass per view, cached per image; ``True`` on a model without TTA
        settings averages the image and its mirror. An ONNX predictor needs image graphs at the views' sizes
        (``samclip export onnx`` writes them); ``None`` then means TTA only where it has them all.
        """
        self._require_clip("classify")
        txt = self.text_embeddings(labels, templates)
        logits = self._logit_scale() * self.image_embedding(size=size, tta=tta) @ txt.T
        return logits.softmax(-1)[0].cpu().numpy()

    def image_embedding(self, *, size: int | None = None, tta: bool | None = None) -> torch.Tensor:
        """1xE L2-normalised CLIP-space embedding of the current image, what :meth:`classify` compares with
        the class texts (same ``size`` / ``tta`` rules): e.g. for image-text retrieval."""
        self._require_clip("image_embedding")
        cfg = self.model.config
        if tta is None:
            views = cfg.classify_views(size)
            tta = cfg.has_tta and (self._onnx is None or all(s in self._onnx.frames for s, _ in views))
        if not tta:
            return self._pooled(self._clip_state(size, "classify"))
        views = cfg.classify_views(size) if cfg.has_tta else cfg.replace(tta_flip=True).classify_views(size)
        total = sum(self._pooled(self._state_for_size(self.state, s, mirrored)) for s, mirrored in views)
        return F.normalize(total, dim=-1)

    def _class_table(self, labels: list[str], templates: Sequence[str] | None) -> torch.Tensor:
        """(1+K)xE normalised: the background class (:data:`BACKGROUND_PROMPTS`) then each label's embedding."""
        return torch.cat([self._background_embedding(), self.text_embeddings(labels, templates)])

    def _mask_class_logits(self, masks: torch.Tensor, labels: list[str], templates: Sequence[str] | None,
                           tta: bool | None, pooling: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """NxHxW bool masks (original pixels) -> (Nx(1+K) logits ``exp(logit_scale) * cos`` of each mask's
        CLIP-head read (:meth:`mask_embeddings`, default pooling) against background + labels, empty N bool).
        ``tta=None``: the mirrored view too when the model's classification has TTA and the head's tokens are
        at hand (:attr:`_reads_head_tokens`)."""
        if tta is None:
            tta = self._reads_head_tokens and self.model.config.has_tta
        emb, empty = self.mask_embeddings(masks.cpu().numpy(), pooling=pooling, tta=tta)
        return self._logit_scale() * emb @ self._class_table(labels, templates).T, empty

    def _class_logits(self, state: ImageState, labels: list[str], templates: Sequence[str] | None,
                      background: bool, refine: bool = False) -> torch.Tensor:
        """(K+1)xGxG per-patch logits ``exp(logit_scale) * cos``; row 0 is the background class. ``refine``:
        of the read that places the refinement's prompts (:meth:`_refine_embeddings`)."""
        txt = self._class_table(labels, templates)
        patches = self._refine_embeddings(state) if refine else self._patch_embeddings(state)
        logits = self._logit_scale() * torch.einsum("ghe,ke->kgh", patches, txt)
        if not background:
            logits[0] = NEG
        return logits

    def _grid_to_original(self, maps: torch.Tensor, state: ImageState) -> torch.Tensor:
        """CxGxG maps over the padded frame -> CxHxW: upsample to the frame, crop the image, resize."""
        h, w = state.input_size
        up = F.interpolate(maps[None].float(), (state.frame, state.frame), mode="bilinear", align_corners=False)
        return F.interpolate(up[..., :h, :w], state.original_size, mode="bilinear", align_corners=False)[0]

    def _low_res_valid(self, state: ImageState, low: int) -> tuple[int, int]:
        h, w = state.input_size
        return math.ceil(h * low / state.frame), math.ceil(w * low / state.frame)

    def semantic_segment(self, labels: Sequence[str], refine: bool = False, *, background: bool = True,
                         threshold: float = 0.5, max_points: int = 3, templates: Sequence[str] | None = None,
                         size: int | None = None, relabel: bool | None = None,
                         tta: bool | None = None, crop_margin: float = 0.0) -> SemanticResult:
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
        """
        self._require_clip("semantic_segment")
        labels = _check_labels(labels)
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        if not 0.0 <= crop_margin <= 1.0:
            raise ValueError(f"crop_margin must be in [0, 1], got {crop_margin}")
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
        logits = self._grid_to_original(grid_logits, clip_state)
        label_map = logits.max(0).indices  # = argmax(0), ~5x faster on CPU over the leading dim
        present = [c for c in torch.unique(label_map).tolist() if c > 0] if refine else []
        if not present:
            return SemanticResult(label_map.cpu().numpy(), logits.cpu().numpy(), names, refined=refine)

        probs = grid_logits.softmax(0)  # over clip_state's grid (its whole padded frame)
        gh, gw = valid_grid(clip_state.input_size, self.patch_size)
        h, w = state.input_size
        p = self.patch_size * state.frame / clip_state.frame  # a CLIP-state patch in SAM-frame pixels
        radius = max(1, round(max(gh, gw) / 8))
        peaks = [[(c, min((j + 0.5) * p, w - 1), min((i + 0.5) * p, h - 1))
                  for i, j in peak_points(probs[c, :gh, :gw], threshold, max_points, radius)] for c in present]
        if relabel:
            out = self._relabelled_masks([pt for per_class in peaks for pt in per_class], labels, templates,
                                         background, tta, len(names), crop_margin)
        else:
            out = self._published_refinement(peaks, present, probs, len(names))
        thr = self.model.mask_threshold
        out[0] = thr if background else NEG
        new_map = out.max(0).indices
        if not background:
            new_map = torch.where(out[1:].max(0).values > thr, new_map, label_map)
        return SemanticResult(new_map.cpu().numpy(), out.cpu().numpy(), names, refined=True)

    def _published_refinement(self, peaks: list[list[tuple[int, float, float]]], present: list[int],
                              probs: torch.Tensor, n_classes: int) -> torch.Tensor:
        """SAM-CLIP's composition: per present class one single-mask decode of its points (SAM-frame (c, x, y))
        with its coarse probability map (``probs`` (K+1)xGxG) as mask input -> (K+1)xHxW refined logits
        (``NEG`` for classes not refined)."""
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
        out = torch.full((n_classes, *state.original_size), NEG, device=refined.device)
        out[present] = refined
        return out

    def _single_point_masks(self, state: ImageState, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nx2 foreground points (SAM-frame pixels of ``state``), each decoded alone (multimask) -> (NxHxW mask
        logits at the original size of the output with the best predicted IoU, that IoU N)."""
        ones = torch.ones(len(coords), 1, dtype=torch.long, device=self.device)
        low_logits, iou = self._decode(state, coords[:, None], ones, None, None, True)
        best = iou.argmax(1)
        rows = torch.arange(len(coords), device=self.device)
        logits = self.model.postprocess_masks(low_logits[rows, best][:, None], state.input_size, state.original_size)
        return logits[:, 0], iou[rows, best]

    def _relabelled_masks(self, points: list[tuple[int, float, float]], labels: list[str],
                          templates: Sequence[str] | None, background: bool, tta: bool | None,
                          n_classes: int, crop_margin: float = 0.0) -> torch.Tensor:
        """One multimask decode per SAM-frame point (c, x, y) -> best mask by predicted IoU -> re-classified
        by the CLIP head over the mask (unsure ones also over their crops, ``crop_margin``) -> (K+1)xHxW: per
        class the max logit of its masks (``NEG`` where none)."""
        state = self.state
        coords = torch.tensor([[x, y] for _, x, y in points], dtype=torch.float32, device=self.device)
        mask_logits, pred_iou = self._single_point_masks(state, coords)
        masks = mask_logits > self.model.mask_threshold
        scores, empty = self._mask_class_logits(masks, labels, templates, tta)
        if not background:
            scores[:, 0] = NEG
        if crop_margin:
            top2 = scores.softmax(-1).topk(2, dim=-1).values
            unsure = ((top2[:, 0] - top2[:, 1]) < crop_margin) & ~empty & (pred_iou >= REFINE_MIN_IOU)
            if bool(unsure.any()):
                both, _ = self._mask_class_logits(masks[unsure], labels, templates, tta, pooling="max+crop")
                if not background:
                    both[:, 0] = NEG
                scores[unsure] = both
        classes = scores.argmax(-1)
        classes[empty | (pred_iou < REFINE_MIN_IOU)] = 0
        out = torch.full((n_classes, *state.original_size), NEG, device=mask_logits.device)
        for k, c in enumerate(classes.tolist()):
            if c > 0:
                out[c] = torch.maximum(out[c], mask_logits[k])
        return out

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
          - ``"max+crop"``: NOT one pass: the normalised sum of the ``"max"`` read (with ``tta`` as asked) and
            the ``"crop"`` read. The two make different mistakes: on two val sets of ~430 objects each it
            labelled clicks / boxes 61.7 / 68.8% and 60.5 / 69.0% with ``tta=True`` (62.4 / 67.2% and 59.3 /
            69.0% without), vs 55.4 / 64.7% and 54.4 / 62.6% for ``"crop"`` and 58.8 / 60.1% and 56.7 / 58.6%
            for ``"max"`` with ``tta``.
          - ``"auto"``: ``"max"`` (``"mean"`` under an ONNX export of format version 1, whose image graph
            outputs only per-patch embeddings; version 2 outputs the head's tokens, and max pools as PyTorch):
            one backbone pass serves every task. ``samclip eval``'s labelling benchmark measures them all:
            on the shipped model ``"crop"`` labels best (test clicks / boxes 49.4 / 60.9% vs 44.7 / 51.1% for
            ``"max"``), at one extra pass per mask.
        Max and region pooling read the pass at the model's ``label_size`` (0: ``clip_size``, where the head
        is trained; the merge picks it on val), mean pooling the one at ``semseg_size``; either is the cached
        SAM-size pass when equal.
        ``tta`` (max / region / mean pooling; off by default): also pool the mirrored mask on the mirrored
        image's pass (one extra backbone pass per image, cached) and average the two normalised embeddings.
        Off here by default (chosen on the previous shipped model, whose clicked / boxed objects it did not
        label better on val: 33.6 / 32.7 vs 34.1 / 33.6%); on the shipped model it labels test clicks / boxes
        47.7 / 51.5% vs 44.7 / 51.1%, and :meth:`semantic_segment`'s relabelling uses it when the model has TTA.
        Returns ``(embeddings NxE L2-normalised, empty N bool)``; an empty mask has an all-zero row.
        """
        self._require_clip("mask_embeddings")
        if pooling not in MASK_POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(map(repr, MASK_POOLINGS))}, got {pooling!r}")
        m = self._check_masks(masks, self.state.original_size)
        if pooling == "auto":
            pooling = "max" if self._reads_head_tokens else "mean"
        if pooling in ("region", "crop", "max+crop") and self._onnx is not None:
            raise ValueError(f"pooling={pooling!r} needs the PyTorch model; an ONNX predictor supports 'max' "
                             "and 'mean'")
        if pooling == "max" and not self._reads_head_tokens:
            raise ValueError("pooling='max' needs the CLIP head's tokens, which this ONNX export (format version 1) "
                             "lacks: re-export the model, or use pooling='mean'")
        if pooling == "crop":
            if tta:
                raise ValueError("tta is for the one-pass poolings (max, region, mean) and max+crop, not 'crop'")
            return self._crop_embeddings(m)
        if pooling == "max+crop":
            one_pass, empty = self.mask_embeddings(m, pooling="max", min_cover=min_cover, context=context, tta=tta)
            crops, _ = self._crop_embeddings(m)
            return F.normalize(one_pass + crops, dim=-1), empty
        task = "semseg" if pooling == "mean" else "label"
        emb, empty = self._pooled_masks(self._clip_state(None, task), m, pooling, min_cover, context)
        if tta and len(m):
            mirrored, _ = self._pooled_masks(self._clip_state(None, task, mirrored=True), m.flip(-1), pooling,
                                             min_cover, context)
            emb = F.normalize(emb, dim=-1) + F.normalize(mirrored, dim=-1)
        return F.normalize(emb, dim=-1), empty

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

    def label_masks(self, masks: Any, labels: Sequence[str], templates: Sequence[str] | None = None, *,
                    pooling: str = "auto", min_cover: float = REGION_MIN_COVER,
                    context: int = REGION_CONTEXT, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Classify masks of the current image (embeddings from :meth:`mask_embeddings`, same arguments).

        Returns ``(label_indices N int64, probs NxK float32)``. An EMPTY mask is flagged with label
        index ``-1`` and an all-zero probability row.
        """
        self._require_clip("label_masks")
        labels = _check_labels(labels)
        emb, empty = self.mask_embeddings(masks, pooling=pooling, min_cover=min_cover, context=context, tta=tta)
        txt = self.text_embeddings(labels, templates)
        if emb.shape[0] == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, len(labels)), dtype=np.float32)
        probs = (self._logit_scale() * emb @ txt.T).softmax(-1)
        probs[empty] = 0.0
        idx = probs.argmax(-1)
        idx[empty] = -1
        return idx.cpu().numpy().astype(np.int64), probs.cpu().numpy().astype(np.float32)

    def _crop_embeddings(self, masks: torch.Tensor, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """NxHxW bool masks -> (NxE normalised embeddings of their crops at ``clip_size``, empty N bool)."""
        size = self.model.config.clip_size
        empty = ~masks.flatten(1).any(1)
        crops = mask_crops(self.state.image, masks.cpu().numpy(), size)
        out = torch.zeros(len(masks), self.model.clip_head.config.out_dim, device=self.device)
        keep = (~empty).nonzero()[:, 0]
        with torch.no_grad(), self._autocast():
            for i in range(0, len(keep), batch):
                rows = keep[i : i + batch]
                x = torch.from_numpy(crops[rows.cpu().numpy()]).to(self.device).permute(0, 3, 1, 2)
                out[rows] = self.model.encode_image(self.model.preprocess(x, size), normalize=True).float()
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
                out.append(self.model.clip_head.region_pooled(state.tokens, regions[i : i + chunk]).float())
        return torch.cat(out)

    # ------------------------------------------------------------------------- composed tasks
    def segment_text(self, phrase: str, *, vocabulary: Sequence[str] | None = None, threshold: float = 0.5,
                     templates: Sequence[str] | None = None, dedupe_iou: float = 0.7, dedupe_cover: float = 0.5,
                     verify: bool = True,
                     tta: bool | None = None) -> list[Instance]:
        """Instances of ``phrase`` in the current image.

        Semantic map over ``[phrase, *vocabulary]`` + background (the vocabulary acts as distractors) at
        the low-res mask resolution 4Gx4G; connected regions (8-connectivity) where the phrase wins and
        its probability exceeds ``threshold`` (regions smaller than a quarter patch are dropped); one
        foreground point per region at its probability peak; SAM head (multimask, best by predicted IoU).
        ``verify`` (default): each mask is read again by the CLIP head over the mask itself
        (:meth:`mask_embeddings`, ``tta`` as in :meth:`semantic_segment`) against the phrase, the vocabulary
        and the background, and kept only where the phrase wins; the score is then the predicted IoU times
        the phrase's probability in that read. On the shipped model, on two val sets of 100 scenes (every
        shape in turn as the phrase, the other 11 as vocabulary; a hit: mask IoU > 0.5), it lifts precision
        from 23 / 23% to 57 / 59% and F1 from 34 / 34 to 54 / 57, while recall falls from 66 / 62% to 52 / 54%
        (docs/experiments.md); with mean pooling, the read of a version-1 ONNX export, F1 34 -> 42 on the first
        set.
        Instances are sorted by score; empty masks and duplicates of a better-scored instance are dropped: mask
        IoU > ``dedupe_iou``, or more than ``dedupe_cover`` of the smaller of the two masks inside the other
        (parts of one object prompted from two regions; val F1 54.3 / 56.5 -> 55.5 / 58.0 on the two sets with
        0.5 vs IoU alone, precision +3.5 / +3.8, recall -0.6 / -0.3 points).
        """
        self._require_clip("segment_text")
        if not isinstance(phrase, str) or not phrase.strip():
            raise ValueError(f"phrase must be a non-empty string, got {phrase!r}")
        vocab = [] if vocabulary is None else _check_labels(vocabulary, "vocabulary")
        labels = [phrase, *[v for v in vocab if v != phrase]]
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
            return []
        coords = torch.tensor(points, dtype=torch.float32, device=self.device)
        mask_logits, pred_iou = self._single_point_masks(state, coords)
        masks = mask_logits > self.model.mask_threshold
        phrase_prob = torch.tensor(peaks, device=self.device)
        if verify:
            logits, empty = self._mask_class_logits(masks, labels, templates, tta)
            read = logits.softmax(-1)
            phrase_prob = torch.where((read.argmax(-1) == 1) & ~empty, read[:, 1], 0.0)
        scores = pred_iou * phrase_prob
        boxes = masks_to_boxes(masks)
        orig_points = frame_to_original(coords, state.original_size, state.input_size)
        kept: list[int] = []
        for k in torch.argsort(scores, descending=True, stable=True).tolist():
            if not masks[k].any() or (verify and phrase_prob[k] == 0):
                continue
            if kept and _duplicate(masks[k], masks[kept], dedupe_iou, dedupe_cover):
                continue
            kept.append(k)
        return [Instance(mask=masks[k].cpu().numpy(), score=float(scores[k]),
                         box=tuple(float(v) for v in boxes[k]), point=tuple(float(v) for v in orig_points[k]),
                         predicted_iou=float(pred_iou[k])) for k in kept]

    def generate(
        self,
        vocabulary: Sequence[str] | None = None,
        *,
        points_per_side: int = 16,
        pred_iou_thresh: float = 0.7,
        stability_score_thresh: float = 0.8,
        stability_score_offset: float = 1.0,
        nms_thresh: float = 0.7,
        points_per_batch: int = 64,
        min_area: int = 0,
        templates: Sequence[str] | None = None,
        pooling: str = "auto",
        tta: bool = False,
    ) -> list[dict[str, Any]]:
        """Everything mode (segment-anything's ``SamAutomaticMaskGenerator`` without crops).

        A ``points_per_side`` x ``points_per_side`` grid of foreground points over the image, decoded in
        batches of ``points_per_batch`` with the three multimask outputs; masks are kept when predicted
        IoU > ``pred_iou_thresh`` and stability score (IoU of the masks thresholded at
        ``mask_threshold +/- stability_score_offset``, on logits upsampled to the input frame) >=
        ``stability_score_thresh``; greedy box NMS at ``nms_thresh`` (scores: predicted IoU); masks with
        fewer than ``min_area`` pixels (and empty ones) are dropped (no hole filling).

        Returns dicts sorted by predicted IoU: ``segmentation`` HxW bool, ``area`` (pixels), ``bbox``
        [x, y, w, h] (SAM's XYWH of the inclusive XYXY box), ``predicted_iou``, ``stability_score``,
        ``point_coords`` [[x, y]] (original pixels) and, with ``vocabulary``, ``label`` and
        ``label_score`` from :meth:`label_masks` with ``pooling`` (default: one pass; ``"crop"``: each mask's
        crop re-encoded, more accurate, one small extra pass per mask) and ``tta`` (the mirrored view pooled
        in, one extra backbone pass; not with ``"crop"``; on the shipped model it lifts everything-mode
        semantic maps from 45.3 to 47.8 val mIoU, 100 scenes).
        """
        vocab = None
        if vocabulary is not None:
            self._require_clip("generate(vocabulary=...)")
            vocab = _check_labels(vocabulary, "vocabulary")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        state = self.state
        big_h, big_w = state.original_size
        h, w = state.input_size
        thr = self.model.mask_threshold
        grid = torch.from_numpy(build_point_grid(points_per_side)).float() * torch.tensor([big_w, big_h])
        frame_pts = original_to_frame(grid, state.original_size, state.input_size).to(self.device)
        keep_low, keep_iou, keep_stab, keep_box, keep_pts = [], [], [], [], []
        for start in range(0, len(grid), points_per_batch):
            pts = frame_pts[start : start + points_per_batch]
            ones = torch.ones(len(pts), 1, dtype=torch.long, device=self.device)
            low, iou = self._decode(state, pts[:, None], ones, None, None, True)
            c = low.shape[1]
            low, iou = low.flatten(0, 1), iou.flatten()
            src = grid[start : start + points_per_batch].repeat_interleave(c, 0)
            sel = (iou > pred_iou_thresh).nonzero()[:, 0]
            for i in range(0, len(sel), 16):
                part = sel[i : i + 16]
                up = F.interpolate(low[part][:, None], (state.frame, state.frame), mode="bilinear",
                                   align_corners=False)[:, 0, :h, :w]
                stab = stability_score(up, thr, stability_score_offset)
                ok = (stab >= stability_score_thresh) & (up > thr).flatten(1).any(1)
                if ok.any():
                    keep_low.append(low[part][ok])
                    keep_iou.append(iou[part][ok])
                    keep_stab.append(stab[ok])
                    keep_box.append(masks_to_boxes(up[ok] > thr))
                    keep_pts.append(src[part.cpu()][ok.cpu()])
        if not keep_low:
            return []
        lows, ious, stabs = torch.cat(keep_low), torch.cat(keep_iou), torch.cat(keep_stab)
        pts_all = torch.cat(keep_pts)
        order = box_nms(torch.cat(keep_box), ious, nms_thresh)
        records: list[dict[str, Any]] = []
        for i in range(0, len(order), 16):
            part = order[i : i + 16]
            masks = self.model.postprocess_masks(lows[part][:, None], state.input_size, state.original_size)[:, 0] > thr
            boxes = box_xyxy_to_xywh(masks_to_boxes(masks))
            areas = masks.flatten(1).sum(1)
            for j, k in enumerate(part.tolist()):
                area = int(areas[j])
                if area == 0 or area < min_area:
                    continue
                records.append({
                    "segmentation": masks[j].cpu().numpy(), "area": area,
                    "bbox": [int(v) for v in boxes[j].tolist()], "predicted_iou": float(ious[k]),
                    "stability_score": float(stabs[k]), "point_coords": [[float(v) for v in pts_all[k].tolist()]],
                })
        if vocab is not None and records:
            idx, probs = self.label_masks(np.stack([r["segmentation"] for r in records]), vocab, templates,
                                          pooling=pooling, tta=tta)
            for r, i, p in zip(records, idx, probs):
                r["label"] = vocab[int(i)]
                r["label_score"] = float(p[i])
        return records


__all__ = ["BACKGROUND_PROMPTS", "ImageState", "Instance", "Predictor", "SemanticResult"]
