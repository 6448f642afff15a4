"""The predictor's core: images and their cached passes, SAM prompts, text embeddings, CLIP-head reads."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F

from ..data.captions import fix_articles
from ..errors import Interrupted
from ..inference.image_input import (
    clip_points,
    original_to_frame,
    preprocess_shape,
    resize_uint8,
    to_rgb_uint8,
    valid_grid,
)
from ..models.sam import Sam
from ..models.samclip import Features, SamClip
from ..precision import autocast, resolve_bf16
from .checks import check_labels, check_templates, checked_flags, content_key, float_tensor
from .state import DecoderInputs, ImageState
from .zoom import click_box, predict_zoomed

#: prompts of the explicit background class of :meth:`Predictor.semantic_segment` (used verbatim, averaged)
BACKGROUND_PROMPTS: tuple[str, ...] = (
    "background", "a plain background", "an empty background", "a textured background",
)
NEG = -1.0e4  # logit of a class that cannot win (finite, so softmax stays defined)
#: prompts upsampled to the image and thresholded at a time by predict_torch (bool masks wanted)
POSTPROCESS_BATCH = 16



class PredictorBase:
    """Images, SAM prompts, text and the CLIP head's reads of a pass; :class:`samclip.Predictor` adds the tasks."""

    # with bf16, a decode call runs in bf16 (mixed) from this many image-embedding elements (C x h x w) times
    # prompts up, in fp32 below: on a 2-core AMX CPU one prompt took 2.5 vs 2.25 ms fp32 on tiny-synthetic's
    # 96x16x16, 5.7 vs 6.0 ms on SAM ViT-B's 256x28x28 (448 px) and 7.7 vs 9.9 ms at 640 px; 256 prompts on
    # tiny-synthetic 74-79 vs 122-130 ms
    mixed_decode_min_elements = 1 << 17

    def __init__(self, model: SamClip | Sam, *, bf16: bool | None = None, backend: str = "torch",
                 onnx_dir: Any = None, templates: Sequence[str] | None = None) -> None:
        if not isinstance(model, SamClip | Sam):
            raise TypeError(f"Predictor needs a SamClip or Sam model, got {type(model).__name__}")
        self.model = model.eval()
        self.has_clip = isinstance(model, SamClip)
        #: the prompt templates every text task uses unless given others: ``templates``, else the model's
        #: ``config.templates``, else :func:`samclip.data.class_prompt_templates`
        model_templates = model.config.templates if isinstance(model, SamClip) else ()
        self.templates = check_templates(templates if templates is not None else (model_templates or None))
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
        self._should_stop: Callable[[], bool] | None = None

    @contextmanager
    def interruptible(self, should_stop: Callable[[], bool]) -> Iterator[None]:
        """Inside the block the long tasks check ``should_stop()`` between their batches (the everything mode's
        prompt batches and crops, full-size mask making, mask labelling's crops / zoom windows / regions, the
        refinement's classes) and raise :class:`samclip.errors.Interrupted` once it returns True. A server uses it
        to stop work whose request has timed out; the cached image state stays usable."""
        previous, self._should_stop = self._should_stop, should_stop
        try:
            yield
        finally:
            self._should_stop = previous

    def _check_interrupt(self) -> None:
        """Raise :class:`Interrupted` when the current :meth:`interruptible` check says stop."""
        if self._should_stop is not None and self._should_stop():
            raise Interrupted("the task was interrupted (its interrupt check returned True)")

    @classmethod
    def from_onnx(cls, onnx_dir: Any, model: SamClip | None = None, **kwargs: Any) -> Self:
        """A predictor on an ONNX export; ``model`` (for the text tower) defaults to the model the export
        was made from (the name or folder recorded in its manifest)."""
        if model is None:
            from ..export.onnx_runtime import read_manifest
            from ..factory import load_model

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
        from ..export.onnx_runtime import OnnxBackend

        engine = OnnxBackend(onnx_dir)
        engine.check_model(self.model)
        return engine

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
        elif isinstance(images, Iterator):  # a generator of images
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
            if isinstance(which, bool) or not isinstance(which, int | np.integer):
                raise TypeError(f"select takes an image index or an ImageState, got {which!r}")
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

    def get_image_embedding(self) -> torch.Tensor:
        """1xCxGxG: the SAM head's image embedding of the current image (segment-anything's name; C = 256 and
        G = 64 for the ViT presets at 1024 px), from the cached pass; a copy, so the cache cannot be changed
        through it."""
        return self.state.sam_embeddings.detach().clone()

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
        if (isinstance(size, bool) or not isinstance(size, int | np.integer | float) or not math.isfinite(size)
                or int(size) != size or size < self.patch_size or size % self.patch_size):
            raise ValueError(f"size must be a positive multiple of the patch size {self.patch_size}, got {size!r}")
        if self._onnx is not None and int(size) not in self._onnx.frames:
            raise ValueError(f"this ONNX export has image graphs for the frames {self._onnx.frames}, not "
                             f"{size}: re-export it (`samclip export onnx` writes the CLIP-head tasks' own sizes "
                             "unless --no-clip-frames), or use the PyTorch backend")
        return int(size)

    def _check_onnx_set_size(self, size: int | None) -> None:
        """An ONNX predictor's images are set at its export's own frame (the prompt decoders' grid)."""
        if self._onnx is not None and size is not None and self._frame_size(size) != self._onnx.frame:
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

    @checked_flags
    def predict(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        zoom: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment the current image from one set of prompts (segment-anything's ``SamPredictor.predict``).

        Args:
            point_coords: Nx2 (x, y) original-image pixels (a single (x, y) is accepted too).
            point_labels: N; 1 foreground, 0 background (-1 padding is ignored by the model).
            box: length-4 XYXY in original-image pixels (or 1x4).
            mask_input: 1x4Gx4G low-resolution logits, e.g. ``low_res_logits[i:i+1]`` of a previous call.
            multimask_output: three masks (ambiguous prompts) instead of one.
            return_logits: return mask logits instead of thresholded masks.
            zoom: decode the box on a second backbone pass over its neighbourhood, a square of
                :data:`~samclip.inference.zoom.ZOOM_CONTEXT` (3) x the box's longer side around it, re-encoded at
                the image's frame, where the object covers more tokens (the latest 4 windows' passes are kept
                with the image; no ``mask_input``; points outside that square are ignored). Points without a
                box take the box of the ordinary pass's best mask for them (by predicted IoU), and are decoded
                with it. Where the square is not smaller than
                the image's longer side it would not magnify (or where that best mask is empty), the ordinary
                pass answers. On the shipped models, box mIoU on two sets of val scenes: teacher 80.5 -> 83.7 and
                77.6 -> 81.0, merged 81.2 -> 84.6 and 78.1 -> 81.7 (objects under 3% of the image 74.8 -> 83.5,
                teacher, first set); one click, the mask ranked first: merged 72.1 -> 75.5 and 69.2 -> 71.6,
                teacher 71.7 -> 75.3 (first set).
        Returns:
            masks CxHxW (bool, or float32 logits), scores C (predicted IoU), low_res_logits Cx4Gx4G (in the
            current image's frame, also with ``zoom``); C = 3 with ``multimask_output`` else 1.
        """
        pc = pl = None
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                raise ValueError("point_coords and point_labels must be given together")
            pc = float_tensor(point_coords, "point_coords")
            pl = float_tensor(point_labels, "point_labels")
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
            bx = float_tensor(box, "box")
            if bx.numel() != 4:
                raise ValueError(f"box must be length-4 XYXY, got shape {tuple(bx.shape)}")
            bx = bx.reshape(1, 4)
        mi = None
        if mask_input is not None:
            mi = float_tensor(mask_input, "mask_input")
            if mi.ndim not in (2, 3, 4) or (mi.ndim > 2 and math.prod(mi.shape[:-2]) != 1):
                raise ValueError(f"mask_input must be 1x4Gx4G low-res logits, got shape {tuple(mi.shape)}")
            mi = mi.reshape(1, 1, *mi.shape[-2:])
        zoomed = self._zoomed(pc, pl, bx, mi, multimask_output) if zoom else None
        if zoomed is None:
            masks, scores, low = self.predict_torch(pc, pl, bx, mi, multimask_output, return_logits)
        else:
            masks, scores, low = zoomed
            if not return_logits:
                masks = masks > self.model.mask_threshold
        return masks[0].cpu().numpy(), scores[0].cpu().numpy(), low[0].cpu().numpy()

    def _zoomed(self, coords: torch.Tensor | None, labels: torch.Tensor | None, box: torch.Tensor | None,
                mask_input: torch.Tensor | None, multimask_output: bool,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """:func:`~samclip.predictor.zoom.predict_zoomed` after checking the prompts suit it; points alone take
        the box of the ordinary pass's best mask for them (:func:`~samclip.predictor.zoom.click_box`)."""
        if mask_input is not None:
            raise ValueError("zoom does not take a mask_input (it is in the image's frame, not the window's)")
        if box is None and coords is None:
            raise ValueError("zoom needs a box or points: they set the window that is re-encoded")
        self._prompt_tensors(self.state, coords, labels, box, None)  # the ordinary checks first
        if box is None:
            box = click_box(self, coords, labels)
            if box is None:  # the ordinary pass finds nothing there: nothing to zoom into
                return None
        return predict_zoomed(self, coords, labels, box, multimask_output)

    @checked_flags
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
        if return_logits:
            return self._full_size_logits(state, low), iou, low
        return self._full_size_masks(state, low), iou, low

    def _prompt_tensors(self, state: ImageState, point_coords: Any, point_labels: Any, boxes: Any,
                        mask_input: Any) -> tuple[torch.Tensor | None, ...]:
        """Validate batched prompts and map them from original pixels into the input frame."""
        batch: dict[str, int] = {}
        coords = labels = None
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is not None:
            coords = float_tensor(point_coords, "point_coords")
            labels = float_tensor(point_labels, "point_labels")
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
            boxes_t = float_tensor(boxes, "boxes")
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
            masks_t = float_tensor(mask_input, "mask_input")
            low = 4 * state.grid
            if masks_t.ndim != 4 or masks_t.shape[1] != 1 or tuple(masks_t.shape[-2:]) != (low, low):
                raise ValueError(f"mask_input must be Bx1x{low}x{low} low-res logits, got shape {tuple(masks_t.shape)}")
            batch["mask_input"] = masks_t.shape[0]
            masks_t = masks_t.float().to(self.device)
        if len(set(batch.values())) > 1:
            raise ValueError(f"prompt batch sizes differ: {batch}")
        if 0 in batch.values():
            raise ValueError(f"an empty prompt batch (B = 0): {batch}; give at least one prompt")
        return coords, labels, boxes_t, masks_t

    def _decode(self, state: ImageState, coords: torch.Tensor | None, labels: torch.Tensor | None,
                boxes: torch.Tensor | None, mask_input: torch.Tensor | None,
                multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM head on cached embeddings; prompts already in input-frame pixels. Returns float32."""
        if self._onnx is not None:
            def arr(t: torch.Tensor | None) -> np.ndarray | None:
                return None if t is None else t.detach().float().cpu().numpy()

            view = state.decoder.setdefault(torch.float32, DecoderInputs())
            if mask_input is None and view.onnx_first_layer is None and self._onnx.has_image_cache:
                view.onnx_first_layer = self._onnx.image_cache(arr(state.sam_embeddings))  # once per image
            low, iou = self._onnx.decode(arr(state.sam_embeddings), arr(coords), arr(labels), arr(boxes),
                                         arr(mask_input), multimask_output, image_cache=view.onnx_first_layer)
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
        filled with the label (articles fixed, "a apple" -> "an apple"), renormalised. Default templates: the
        predictor's :attr:`templates`. Cached by a content hash of (label, templates)."""
        self._require_clip("text_embeddings")
        labels = check_labels(labels)
        templates = self.templates if templates is None else check_templates(templates)
        sets = [(content_key(label, templates), [fix_articles(t.format(label)) for t in templates])
                for label in labels]
        return self._embed_prompt_sets(sets)

    def _background_embedding(self) -> torch.Tensor:
        return self._embed_prompt_sets([(content_key("<background>", BACKGROUND_PROMPTS), list(BACKGROUND_PROMPTS))])

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

    def _clip_state(self, size: int | None, task: str, mirrored: bool = False,
                    base: ImageState | None = None) -> ImageState:
        """The pass a CLIP-head task reads: ``size`` if given, else the model's default for the task
        (``config.clip_size`` for classification, ``config.label_size`` (0: ``clip_size``) for max / region
        mask labels, ``config.semseg_size`` for dense maps; the merge picks them on validation data). The
        native SAM-size pass is reused when they match it; otherwise one extra backbone pass at that size is
        made and cached per image. An ONNX predictor reads the same sizes where its export has image graphs at
        them (``samclip export onnx`` writes them), else its own frame. ``base``: the pass of another image than
        the current one (a zoom window's)."""
        if size is None and isinstance(self.model, SamClip):
            cfg = self.model.config
            size = {"semseg": cfg.semseg_size, "label": cfg.label_size or cfg.clip_size}.get(task, cfg.clip_size)
            if self._onnx is not None and size not in self._onnx.frames:
                size = None
        return self._state_for_size(self.state if base is None else base, size, mirrored)

    @checked_flags
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

    @checked_flags
    def image_embedding(self, *, size: int | None = None, tta: bool | None = None) -> torch.Tensor:
        """1xE L2-normalised CLIP-space embedding of the current image, what :meth:`classify` compares with
        the class texts (same ``size`` / ``tta`` rules): e.g. for image-text retrieval."""
        self._require_clip("image_embedding")
        if size is not None:
            self._frame_size(size)  # a bad size is an error here, never the default
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


    def _low_res_valid(self, state: ImageState, low: int) -> tuple[int, int]:
        h, w = state.input_size
        return math.ceil(h * low / state.frame), math.ceil(w * low / state.frame)

    def _single_point_masks(self, state: ImageState, coords: torch.Tensor,
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nx2 foreground points (SAM-frame pixels of ``state``), each decoded alone (multimask) -> (Nx1x4Gx4G
        low-res logits of the output with the best predicted IoU, that IoU N, its NxHxW bool mask at the original
        size, :meth:`_full_size_masks`); :meth:`_full_size_logits` makes the logits where needed."""
        ones = torch.ones(len(coords), 1, dtype=torch.long, device=self.device)
        low_logits, iou = self._decode(state, coords[:, None], ones, None, None, True)
        best = iou.argmax(1)
        rows = torch.arange(len(coords), device=self.device)
        low = low_logits[rows, best][:, None]
        return low, iou[rows, best], self._full_size_masks(state, low)[:, 0]

    def _full_size_logits(self, state: ImageState, low: torch.Tensor) -> torch.Tensor:
        """NxKx4Gx4G low-res logits -> NxKxHxW at ``state``'s original size."""
        return self.model.postprocess_masks(low, state.input_size, state.original_size)

    def _full_size_masks(self, state: ImageState, low: torch.Tensor) -> torch.Tensor:
        """NxKx4Gx4G low-res logits -> NxKxHxW bool masks at ``state``'s original size, upsampled and thresholded
        POSTPROCESS_BATCH prompts at a time (float logits of every prompt at the image's size were 4x the bool
        result: 1000 prompts on a 1024^2 image took 5.5 GB for a 1 GB answer)."""
        parts = []
        for part in low.split(POSTPROCESS_BATCH):
            self._check_interrupt()
            parts.append(self._full_size_logits(state, part) > self.model.mask_threshold)
        return torch.cat(parts)  # split always yields a part, an empty one for no prompts
