"""Export a merged SAM-CLIP model to ONNX: the image side (backbone + SAM neck, CLIP head) and prompt decoders.

    samclip export onnx --model tiny-synthetic --out exports/tiny           # CLI
    export_onnx("runs/demo/merge/model", "exports/demo", size=None, opset=17)  # Python

The output folder holds

- ``image_encoder.onnx``: ``pixels`` 1x3xSxS float32 (normalised with SAM's pixel mean / std, padded
  bottom/right to SxS, S = the model's native frame unless ``size`` says otherwise) -> ``image_embeddings``
  1xCxGxG (the SAM head's input) and ``backbone_tokens`` 1xGxGxD (D = the backbone width). The one
  backbone pass; SAM-only work (prompt decodes) needs nothing more.
- ``clip_head.onnx``: ``backbone_tokens`` and ``valid_grid`` int64 [2] (token rows / columns over the
  image, ``ceil(h / patch), ceil(w / patch)``; pass [G, G] for a full frame) -> ``patch_embeddings``
  1xGxGxE (L2-normalised per-patch CLIP-head embeddings), ``image_embedding_clip`` 1xE (L2-normalised pooled
  CLIP-head embedding; the max-pool covers only the ``valid_grid`` tokens, as in the predictor) and
  ``head_tokens`` 1xGxGxD (the head's blocks' output before any pooling: what the predictor's max pooling
  over a mask and its refinement's window read pool, with the head's own LayerNorm / MLP, in PyTorch). Run
  only for CLIP tasks, on the cached backbone tokens, as the PyTorch predictor does. (Format version 1 had
  one image graph with ``pixels`` and ``valid_grid`` in and the SAM embeddings and the two CLIP embeddings
  out; :class:`~samclip.export.OnnxBackend` still reads it.)
- ``prompt_decoder.onnx`` (multimask output, K = 3) and ``prompt_decoder_single.onnx`` (single-mask
  output, K = 1): the multimask choice is baked into each graph, so both variants are exported.
  Inputs ``image_embeddings`` 1xCxGxG, ``point_coords`` BxNx2 float32 (x, y pixels of the SxS input
  frame; N and B dynamic), ``point_labels`` BxN float32 (-1 padding, 0 background, 1 foreground,
  2 box top-left, 3 box bottom-right: a box is two extra points, as in segment-anything's ONNX export),
  ``mask_input`` Bx1x4Gx4G logits and ``has_mask_input`` [1] (1.0: use ``mask_input``; 0.0: ignore it)
  -> ``low_res_masks`` BxKx4Gx4G logits and ``iou_predictions`` BxK. Without a box, append a (0, 0)
  point of label -1 (the prompt encoder's padding) to match the PyTorch model exactly;
  :class:`samclip.export.OnnxBackend` does this for you.
  With ``decoder_precision="int8"`` both decoders are written with int8 weights (onnxruntime dynamic
  quantization of the MatMul / Gemm weights, activations quantized on the fly; the convolutions stay
  float): smaller files and a faster decode at a small cost in accuracy (``benchmarks/onnx_speed.py``
  measures both); the manifest's ``decoder_precision`` says which an export holds.
- ``decoder_image_cache.onnx``: ``image_embeddings`` 1xCxGxG -> what the decoder's first layer needs of the
  image for prompts without a mask input (``image_tokens`` 1x(G*G)xC, the image plus the no-mask embedding, and
  the first layer's ``t2i_keys``, ``t2i_values``, ``i2t_queries`` per head), computed once per image; and
  ``prompt_decoder_cached.onnx`` / ``prompt_decoder_cached_single.onnx``, the decoders that start from it:
  those four tensors, ``point_coords`` and ``point_labels`` (as above; no mask input) -> the same outputs, about
  1.4-1.8x faster per call on the shipped model (``benchmarks/onnx_speed.py``). The PyTorch predictor caches
  the same projections; :class:`~samclip.export.OnnxBackend` uses these graphs when asked to
  (:meth:`~samclip.export.OnnxBackend.image_cache`), the others for prompts with a mask input and for exports
  that lack them.
- ``image_encoder_<S>.onnx`` and ``clip_head_<S>.onnx`` for each other frame S the model's CLIP-head tasks
  read by default (its ``clip_size`` and ``tta_sizes`` for classification, ``label_size``, ``semseg_size``;
  e.g. 128 and 112 px for the shipped model, whose SAM frame is 256): the same graphs at that frame, so that
  an ONNX predictor reads
  every task at the size PyTorch does (the shipped model's CLIP head classifies at 128 px; one 256 px view
  scores 83% zero-shot vs 95%). Each frame's graphs hold their own copy of the weights (tiny-synthetic: 13.6 MB
  per frame; a ViT-B backbone: ~0.4 GB). ``clip_frames=False`` (CLI ``--no-clip-frames``) leaves them out: a
  smaller export whose predictor reads everything from the one frame. The manifest lists every frame's two graphs
  (``graphs``).
- ``text_encoder.onnx`` (when the model has a tokenizer): ``input_ids`` BxL int64 (L = the text tower's
  context length; start token, ids, end token, zero padding; B dynamic) -> ``text_embeddings`` BxE
  (L2-normalised), and ``tokenizer.json`` (the ``tokenizers`` file; the manifest's ``text`` entry gives the
  start and end token ids and L; padding is 0), so that a runtime without the PyTorch model embeds class names too
  (:meth:`samclip.export.OnnxBackend.encode_text`). The PyTorch predictor keeps its own text tower.
- ``samclip_onnx.json``: the manifest (model config, frame, grid, patch size, pixel mean / std, logit
  scale, mask threshold, file and tensor names) so a runtime can pre/post-process without torch weights.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import replace_folder, temporary_folder
from ..models.layers import LayerNorm2d
from ..models.mask_decoder import FirstLayerImage
from ..models.sam import Sam
from ..models.samclip import SamClip

MANIFEST_NAME = "samclip_onnx.json"
SAM_MANIFEST_NAME = "sam_onnx.json"  # segment-anything-compatible exports (sam_onnx.py)
# the opsets asked of torch.onnx: from the first with every operator the graphs use to the newest this torch writes
MIN_OPSET = 14
try:
    from torch.onnx._constants import ONNX_MAX_OPSET as MAX_OPSET
except ImportError:  # a torch without the constant: the TorchScript exporter's newest since torch 2.4
    MAX_OPSET = 20
IMAGE_ENCODER_NAME = "image_encoder.onnx"
CLIP_HEAD_NAME = "clip_head.onnx"
TEXT_ENCODER_NAME = "text_encoder.onnx"
TOKENIZER_NAME = "tokenizer.json"
DECODER_NAMES = {True: "prompt_decoder.onnx", False: "prompt_decoder_single.onnx"}  # keyed by multimask
DECODER_CACHE_NAME = "decoder_image_cache.onnx"
CACHED_DECODER_NAMES = {True: "prompt_decoder_cached.onnx", False: "prompt_decoder_cached_single.onnx"}
DECODER_CACHE_OUTPUTS = ("image_tokens", "t2i_keys", "t2i_values", "i2t_queries")
CACHED_DECODER_INPUTS = (*DECODER_CACHE_OUTPUTS, "point_coords", "point_labels")
DECODER_PRECISIONS = ("fp32", "int8")
FORMAT = "samclip-onnx"
# 2: the image graph split into the backbone + SAM neck and the CLIP head (which also outputs its tokens);
#    graphs at the CLIP-head tasks' other sizes (extra_frames). 1: one image graph, no head tokens.
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
IMAGE_INPUTS = ("pixels",)
IMAGE_OUTPUTS = ("image_embeddings", "backbone_tokens")
CLIP_HEAD_INPUTS = ("backbone_tokens", "valid_grid")
CLIP_HEAD_OUTPUTS = ("patch_embeddings", "image_embedding_clip", "head_tokens")
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")


# ------------------------------------------------------------------------------ export-only wrappers
class _StaticLayerNorm2d(nn.Module):
    """:class:`LayerNorm2d` with a constant normalised shape (the TorchScript exporter needs one when the
    batch or point axis is dynamic); shares the original's parameters."""

    def __init__(self, norm: LayerNorm2d) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps
        self.channels = int(norm.weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def _export_view(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` (same parameter tensors) with every LayerNorm2d made export-friendly;
    the original module tree is not touched."""
    if isinstance(module, LayerNorm2d):
        return _StaticLayerNorm2d(module)
    view = copy.copy(module)
    view._modules = {name: None if child is None else _export_view(child) for name, child in module._modules.items()}
    return view


class ImageEncoderGraph(nn.Module):
    """The backbone once, then the SAM neck: pixels -> (SAM image embeddings, backbone tokens)."""

    def __init__(self, model: SamClip) -> None:
        super().__init__()
        self.model = _export_view(model)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.features(pixels)
        return self.model.sam_embeddings(feats), feats.tokens


class ClipHeadGraph(nn.Module):
    """The CLIP head on backbone tokens: (tokens, valid_grid) -> (per-patch embeddings, pooled embedding over
    the valid tokens, the head's tokens)."""

    def __init__(self, model: SamClip) -> None:
        super().__init__()
        self.model = _export_view(model)

    def forward(self, backbone_tokens: torch.Tensor, valid_grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model = self.model
        head = model.clip_head.tokens(backbone_tokens)
        patches = F.normalize(model.clip_head.per_patch(head), dim=-1)
        rows = torch.arange(head.shape[1], device=head.device) < valid_grid[0]
        cols = torch.arange(head.shape[2], device=head.device) < valid_grid[1]
        outside = ~(rows[:, None] & cols[None, :])
        masked = head.masked_fill(outside[None, :, :, None], float("-inf"))
        pooled = F.normalize(model.clip_head.pooled(masked), dim=-1)
        return patches, pooled, head


class TextEncoderGraph(nn.Module):
    """The CLIP text tower: BxL token ids -> BxE L2-normalised text embeddings."""

    def __init__(self, model: SamClip) -> None:
        super().__init__()
        self.model = _export_view(model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(input_ids), dim=-1)


class PromptDecoderGraph(nn.Module):
    """SAM's prompt encoder + mask decoder with segment-anything's ONNX prompt convention.

    Reuses the model's prompt-encoder and mask-decoder modules (no weights are copied or changed).
    Boxes arrive as two points labelled 2 / 3; -1 points are padding; the dense mask prompt is blended
    with ``has_mask_input``. Coordinates are pixels of the exported frame (``frame`` pixels per side),
    rescaled to the prompt encoder's native frame exactly as :meth:`Sam.decode` does.
    """

    def __init__(self, sam: Sam, frame: int, multimask_output: bool) -> None:
        super().__init__()
        self.prompt_encoder = _export_view(sam.prompt_encoder)
        self.mask_decoder = _export_view(sam.mask_decoder)
        self.multimask_output = multimask_output
        grid = frame // sam.config.image_encoder.patch_size
        self.scale = sam.img_size / frame
        h, w = self.prompt_encoder.input_image_size
        self.register_buffer("frame_wh", torch.tensor([float(w), float(h)]), persistent=False)
        with torch.no_grad():
            self.register_buffer("dense_pe", self.prompt_encoder.get_dense_pe((grid, grid)).clone(), persistent=False)

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        coords = (coords * self.scale + 0.5) / self.frame_wh  # pixel centres, normalised like the model
        emb = pe.pe_layer._encode(coords)
        lab = labels[..., None]
        emb = torch.where(lab == -1, torch.zeros_like(emb), emb)
        emb = emb + (lab == -1).to(emb.dtype) * pe.not_a_point_embed.weight
        for i in range(4):
            emb = emb + (lab == i).to(emb.dtype) * pe.point_embeddings[i].weight
        return emb

    def _prompt_embeddings(self, point_coords: torch.Tensor, point_labels: torch.Tensor, mask_input: torch.Tensor,
                           has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sparse point embeddings, dense mask embedding blended with the no-mask one by ``has_mask_input``)."""
        pe = self.prompt_encoder
        dense = has_mask_input * pe.mask_downscaling(mask_input)
        dense = dense + (1 - has_mask_input) * pe.no_mask_embedding()
        return self._embed_points(point_coords, point_labels), dense

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self._prompt_embeddings(point_coords, point_labels, mask_input, has_mask_input)
        return self.mask_decoder(image_embeddings, self.dense_pe, sparse, dense, self.multimask_output)


class DecoderImageCacheGraph(nn.Module):
    """Image embeddings 1xCxGxG -> the mask decoder's first-layer view of them for prompts without a mask input
    (:meth:`Sam.decoder_image_cache`, as four tensors)."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = _export_view(sam)

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = self.sam.decoder_image_cache(image_embeddings)
        return cache.tokens, cache.t2i_keys, cache.t2i_values, cache.i2t_queries


class CachedPromptDecoderGraph(PromptDecoderGraph):
    """:class:`PromptDecoderGraph` without a mask input, starting from :class:`DecoderImageCacheGraph`'s outputs of
    one image: the decoder's first layer reads the image's projections instead of computing them per call."""

    def forward(self, image_tokens: torch.Tensor, t2i_keys: torch.Tensor, t2i_values: torch.Tensor,
                i2t_queries: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        md = self.mask_decoder
        tokens = md.decoder_tokens(self._embed_points(point_coords, point_labels))
        image = FirstLayerImage(image_tokens, t2i_keys, t2i_values, i2t_queries)
        hs, src = md.transformer.forward_projected(image, self.dense_pe, tokens)
        grid = self.dense_pe.shape[-1]
        return md.output_masks(hs, src, grid, grid, slice(1, None) if self.multimask_output else slice(0, 1))


# ------------------------------------------------------------------------------------------- export
EXPORTERS = ("auto", "torchscript", "dynamo")


def _dynamic_shapes(module: nn.Module, input_names: tuple[str, ...],
                    dynamic_axes: dict[str, dict[int, str]]) -> dict[str, Any] | None:
    """``dynamic_axes`` (by input name) -> torch.export ``dynamic_shapes`` keyed by forward() argument."""
    if not dynamic_axes:
        return None
    dims: dict[str, Any] = {}
    params = list(inspect.signature(module.forward).parameters)
    out: dict[str, Any] = {}
    for param, name in zip(params, input_names):
        axes = dynamic_axes.get(name)
        out[param] = None if not axes else {i: dims.setdefault(label, torch.export.Dim(label))
                                            for i, label in axes.items()}
    return out


def _torch_export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: tuple[str, ...],
                  output_names: tuple[str, ...], dynamic_axes: dict[str, dict[int, str]], opset: int,
                  exporter: str = "auto") -> str:
    """``torch.onnx.export`` with the TorchScript exporter (``exporter="auto"``: the dynamo exporter if that
    fails). Returns the exporter used ("torchscript" or "dynamo")."""
    errors = []
    if exporter in ("auto", "torchscript"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, str(path), input_names=list(input_names),
                                  output_names=list(output_names), dynamic_axes=dynamic_axes or None,
                                  opset_version=opset, do_constant_folding=True, dynamo=False)
            _check_opset(path, opset)
            return "torchscript"
        except Exception as err:  # noqa: BLE001 - any exporter failure -> try the other exporter
            errors.append(f"torchscript: {err}")
    if exporter in ("auto", "dynamo"):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(module, args, input_names=list(input_names),
                                            output_names=list(output_names), opset_version=opset, dynamo=True,
                                            dynamic_shapes=_dynamic_shapes(module, input_names, dynamic_axes))
                program.save(str(path), external_data=False)
            _check_opset(path, opset)
            return "dynamo"
        except Exception as err:  # noqa: BLE001
            errors.append(f"dynamo: {err}")
    raise RuntimeError(f"ONNX export of {type(module).__name__} failed: " + "; ".join(errors))


def _export_file(path: Path) -> bool:
    """Whether ``path`` is a file an export writes (its graphs, manifests and tokenizer)."""
    return path.is_file() and (path.suffix == ".onnx"
                               or path.name in (MANIFEST_NAME, TOKENIZER_NAME, SAM_MANIFEST_NAME))


def check_out_folder(out: str | os.PathLike, overwrite: bool) -> Path:
    """``out`` as a Path, checked as the target of an export: absent, or a folder holding only an earlier
    export's files (replacing it deletes them; a folder with anything else is refused)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not _export_file(p))
        if foreign:
            raise FileExistsError(f"{out.resolve()} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}"
                                  ", which an export does not write; choose an empty or new folder")
    return out


def check_export_options(opset: int, exporter: str, decoder_precision: str) -> None:
    """Raise ValueError for an opset this torch does not write, an unknown exporter or decoder precision."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if decoder_precision not in DECODER_PRECISIONS:
        raise ValueError(f"decoder_precision must be one of {DECODER_PRECISIONS}, got {decoder_precision!r}")
    if isinstance(opset, bool) or int(opset) != opset or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an integer in {MIN_OPSET}..{MAX_OPSET} (what this torch exports), got {opset}")


@contextlib.contextmanager
def writing_export(out: Path, model: nn.Module) -> Iterator[Path]:
    """Write an export of ``model`` (in eval mode meanwhile, its mode restored after) into a temporary folder
    beside ``out`` (yielded), renamed to ``out`` when the block ends without an error, deleted when it raises:
    ``out`` never holds a partial export."""
    was_training = model.training
    model.eval()
    tmp = temporary_folder(out)
    try:
        yield tmp
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        model.train(was_training)


def _check_opset(path: Path, opset: int) -> None:
    """Raise where the graph written to ``path`` imports another default-domain opset than ``opset`` (an
    exporter may fall back to its own), so that the manifest never names an opset the graphs do not have."""
    import onnx

    written = {o.domain: o.version for o in onnx.load(str(path), load_external_data=False).opset_import}
    version = written.get("", written.get("ai.onnx"))
    if version != opset:
        raise ValueError(f"asked for opset {opset}, the exporter wrote opset {version}")


def _fingerprint(model: SamClip) -> list[float]:
    """A few weight values, so a runtime can tell that a torch model is the one that was exported."""
    parts = [model.backbone.patch_embed.proj.weight, model.sam.mask_decoder.iou_token.weight,
             model.clip_head.mlp[-1].weight]
    return [round(float(v), 6) for p in parts for v in p.detach().float().flatten()[:4].cpu()]


def _load(model: SamClip | str | os.PathLike) -> tuple[SamClip, str | None]:
    """The model and, when it was given by name or folder, that source (kept in the manifest)."""
    if isinstance(model, SamClip):
        return model, None
    if isinstance(model, nn.Module):
        raise TypeError(f"ONNX export needs a merged SamClip model, got {type(model).__name__}")
    from .. import hub, pretrained
    from ..factory import load_model

    named = pretrained.is_registered("samclip", str(model)) or hub.is_hub_id(str(model))
    source = str(model) if named else str(Path(model).resolve())
    return load_model(model), source  # FileNotFoundError / KeyError / CheckpointError with a clear message


def export_onnx(model: SamClip | str | os.PathLike, out: str | os.PathLike, *, size: int | None = None,
                opset: int = 17, overwrite: bool = True, exporter: str = "auto",
                decoder_precision: str = "fp32", clip_frames: bool = True) -> Path:
    """Export ``model`` (a :class:`SamClip`, a registered name or a saved folder) to the folder ``out``.

    ``size``: the input frame S in pixels (a multiple of the patch size; default the native frame).
    ``exporter``: "auto" (TorchScript-based ``torch.onnx.export(dynamo=False)``, the dynamo exporter if that
    fails), "torchscript" or "dynamo". ``decoder_precision``: "fp32" (default) or "int8" (dynamically
    quantized decoder weights, see the module docstring). ``clip_frames``: also an image graph at each other
    frame the CLIP-head tasks read by default (:func:`clip_task_frames`). Everything is written to a temporary
    folder beside ``out`` and renamed into place at the end, so ``out`` never holds a partial export. Returns
    ``out``.
    """
    check_export_options(opset, exporter, decoder_precision)
    out = check_out_folder(out, overwrite)
    model, source = _load(model)
    enc = model.sam.config.image_encoder
    frame = int(enc.img_size if size is None else size)
    if frame < enc.patch_size or frame % enc.patch_size:
        raise ValueError(f"size must be a positive multiple of the patch size {enc.patch_size}, got {size}")
    grid = frame // enc.patch_size
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ValueError(f"export a float32 model (got {dtype}); call model.float() first")

    with writing_export(out, model) as tmp:
        exporters = {}
        frames = [frame, *(clip_task_frames(model, frame) if clip_frames else [])]
        with torch.no_grad():
            for f in frames:
                g = f // enc.patch_size
                pixels = torch.randn(1, 3, f, f, device=device)
                valid = torch.tensor([g, g], dtype=torch.int64, device=device)
                tokens = model.features(pixels).tokens
                names = graph_names(f, frame)
                exporters[names[0]] = _torch_export(ImageEncoderGraph(model), (pixels,), tmp / names[0],
                                                    IMAGE_INPUTS, IMAGE_OUTPUTS, {}, opset, exporter)
                exporters[names[1]] = _torch_export(ClipHeadGraph(model), (tokens, valid), tmp / names[1],
                                                    CLIP_HEAD_INPUTS, CLIP_HEAD_OUTPUTS, {}, opset, exporter)
            c = model.sam.config.prompt_embed_dim
            args = (torch.randn(1, c, grid, grid, device=device),
                    torch.rand(2, 3, 2, device=device) * frame,
                    torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, -1.0]], device=device),
                    torch.randn(2, 1, 4 * grid, 4 * grid, device=device),
                    torch.ones(1, device=device))
            dyn = {"point_coords": {0: "batch", 1: "num_points"}, "point_labels": {0: "batch", 1: "num_points"},
                   "mask_input": {0: "batch"}, "low_res_masks": {0: "batch"}, "iou_predictions": {0: "batch"}}
            for multimask, name in DECODER_NAMES.items():
                exporters[name] = _torch_export(PromptDecoderGraph(model.sam, frame, multimask), args, tmp / name,
                                                DECODER_INPUTS, DECODER_OUTPUTS, dyn, opset, exporter)
                if decoder_precision == "int8":
                    _quantize_in_place(tmp / name)
            cache_graph = DecoderImageCacheGraph(model.sam)
            exporters[DECODER_CACHE_NAME] = _torch_export(cache_graph, args[:1], tmp / DECODER_CACHE_NAME,
                                                          ("image_embeddings",), DECODER_CACHE_OUTPUTS, {}, opset,
                                                          exporter)
            cached_args = (*cache_graph(args[0]), *args[1:3])
            for multimask, name in CACHED_DECODER_NAMES.items():
                exporters[name] = _torch_export(CachedPromptDecoderGraph(model.sam, frame, multimask), cached_args,
                                                tmp / name, CACHED_DECODER_INPUTS, DECODER_OUTPUTS,
                                                {k: v for k, v in dyn.items() if k != "mask_input"}, opset, exporter)
                if decoder_precision == "int8":
                    _quantize_in_place(tmp / name)
            if model.tokenizer is not None:  # the text tower, batch dynamic
                ids = model.tokenizer(["a photo of a star", "a ring"]).to(device)
                exporters[TEXT_ENCODER_NAME] = _torch_export(
                    TextEncoderGraph(model), (ids,), tmp / TEXT_ENCODER_NAME, ("input_ids",), ("text_embeddings",),
                    {"input_ids": {0: "batch"}, "text_embeddings": {0: "batch"}}, opset, exporter)
                (tmp / TOKENIZER_NAME).write_text(model.tokenizer.to_json(), encoding="utf-8")  # umask mode
        manifest = _manifest(model, frame, grid, opset, exporters, source)
        manifest["graphs"] = {str(f): list(graph_names(f, frame)) for f in frames}
        manifest["extra_frames"] = {str(f): graph_names(f, frame)[0] for f in frames[1:]}
        manifest["decoder_precision"] = decoder_precision
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def clip_task_frames(model: SamClip, frame: int) -> list[int]:
    """The frames other than ``frame`` that the model's CLIP-head tasks read by default (classification views,
    mask labels, dense maps), ascending."""
    cfg = model.config
    sizes = {s for s, _ in cfg.classify_views()} | {cfg.label_size or cfg.clip_size, cfg.semseg_size}
    return sorted(s for s in sizes if s != frame)


def graph_names(frame: int, own_frame: int) -> tuple[str, str]:
    """File names of the (backbone + SAM neck, CLIP head) graphs at ``frame``; the export's own frame's carry no
    size suffix."""
    if frame == own_frame:
        return IMAGE_ENCODER_NAME, CLIP_HEAD_NAME
    return f"image_encoder_{frame}.onnx", f"clip_head_{frame}.onnx"


def _quantize_in_place(path: Path) -> None:
    """Replace the ONNX graph at ``path`` by its dynamically quantized version (uint8 weights of MatMul /
    Gemm, as segment-anything's own ONNX export offers; onnxruntime's quantizer)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as err:
        raise ImportError("decoder_precision='int8' needs onnxruntime: pip install 'samclip[onnx]'") from err
    quantized = path.with_suffix(".int8.onnx")
    logger = logging.getLogger()  # the quantizer logs a pre-processing hint at WARNING on the root logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        quantize_dynamic(path, quantized, weight_type=QuantType.QUInt8)
    finally:
        logger.setLevel(level)
    os.replace(quantized, path)


def _manifest(model: SamClip, frame: int, grid: int, opset: int, exporters: dict[str, str],
              source: str | None) -> dict[str, Any]:
    sam_cfg = model.sam.config
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_type": "samclip",
        "source": source,
        "config": model.config.to_dict(),
        "frame": frame,
        "native_frame": sam_cfg.image_encoder.img_size,
        "grid": grid,
        "patch_size": sam_cfg.image_encoder.patch_size,
        "low_res": 4 * grid,
        "embed_dim": sam_cfg.prompt_embed_dim,
        "clip_dim": model.config.head.out_dim,
        "num_multimask_outputs": sam_cfg.mask_decoder.num_multimask_outputs,
        "pixel_mean": list(sam_cfg.pixel_mean),
        "pixel_std": list(sam_cfg.pixel_std),
        "mask_threshold": sam_cfg.mask_threshold,
        "logit_scale": float(model.logit_scale.detach().float()),
        "opset": opset,
        "torch_version": torch.__version__,
        "exporters": exporters,
        "fingerprint": _fingerprint(model),
        "files": {"image_encoder": IMAGE_ENCODER_NAME, "clip_head": CLIP_HEAD_NAME,
                  "decoder_multimask": DECODER_NAMES[True], "decoder_single": DECODER_NAMES[False]},
        "image_encoder": {"inputs": list(IMAGE_INPUTS), "outputs": list(IMAGE_OUTPUTS)},
        "clip_head": {"inputs": list(CLIP_HEAD_INPUTS), "outputs": list(CLIP_HEAD_OUTPUTS)},
        "prompt_decoder": {"inputs": list(DECODER_INPUTS), "outputs": list(DECODER_OUTPUTS),
                           "point_labels": {"-1": "padding", "0": "background", "1": "foreground",
                                            "2": "box top-left", "3": "box bottom-right"}},
        "cached_decoder": {"image_cache": DECODER_CACHE_NAME, "image_cache_outputs": list(DECODER_CACHE_OUTPUTS),
                           "multimask": CACHED_DECODER_NAMES[True], "single": CACHED_DECODER_NAMES[False],
                           "inputs": list(CACHED_DECODER_INPUTS), "outputs": list(DECODER_OUTPUTS)},
        "text": {"encoder": TEXT_ENCODER_NAME, "tokenizer": TOKENIZER_NAME,
                 "context_length": model.config.text.context_length, "sot_token_id": model.config.text.sot_token_id,
                 "eot_token_id": model.config.text.eot_token_id, "padding": 0,
                 "inputs": ["input_ids"], "outputs": ["text_embeddings"]} if model.tokenizer is not None else None,
    }


__all__ = [
    "CACHED_DECODER_NAMES", "CLIP_HEAD_NAME", "DECODER_CACHE_NAME", "DECODER_NAMES", "DECODER_PRECISIONS",
    "IMAGE_ENCODER_NAME", "MANIFEST_NAME", "TEXT_ENCODER_NAME", "TOKENIZER_NAME", "CachedPromptDecoderGraph",
    "ClipHeadGraph", "DecoderImageCacheGraph", "ImageEncoderGraph", "PromptDecoderGraph", "TextEncoderGraph",
    "clip_task_frames", "export_onnx", "graph_names",
]
