"""Run an ONNX export (:func:`samclip.export.export_onnx`) with onnxruntime on the CPU.

    backend = OnnxBackend("exports/tiny")
    pixels, input_size = backend.preprocess(image)                        # HxWx3 uint8 -> 1x3xSxS
    emb, patches, pooled = backend.encode(pixels, backend.valid_grid(input_size))  # both graphs
    emb, tokens = backend.encode_image(pixels)                            # the backbone pass only
    low_res, iou = backend.decode(emb, point_coords=[[[60.0, 40.0]]], point_labels=[[1]])

Everything is numpy float32. :meth:`OnnxBackend.decode` follows :meth:`samclip.models.Sam.decode`: B prompt
sets, coordinates in pixels of the SxS input frame, labels 1 / 0 / -1, boxes Bx4 XYXY, mask input Bx1x4Gx4G;
it maps boxes to the two labelled points (2, 3) the graph expects and adds the padding point the
PyTorch prompt encoder adds when there is no box, so results match the PyTorch model.
``samclip.Predictor(model, backend="onnx", onnx_dir=...)`` uses this class for the image and prompt
graphs (the text tower stays in PyTorch).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .onnx_export import (
    DECODER_NAMES,
    FORMAT,
    FORMAT_VERSION,
    IMAGE_ENCODER_NAME,
    MANIFEST_NAME,
    READABLE_FORMAT_VERSIONS,
)


class OnnxBackend:
    """onnxruntime sessions (CPUExecutionProvider) for an exported folder, plus its manifest.

    Args:
        folder: a folder written by :func:`samclip.export.export_onnx` (``samclip export onnx``).
        threads: intra-op threads per session (default: onnxruntime's choice).
        providers: onnxruntime execution providers (default ``["CPUExecutionProvider"]``).
    """

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        self.manifest = read_manifest(folder)  # first: it checks what folder is
        self.folder = Path(folder)
        m = self.manifest
        self.frame: int = int(m["frame"])
        self.grid: int = int(m["grid"])
        self.patch_size: int = int(m["patch_size"])
        self.low_res: int = int(m["low_res"])
        self.pixel_mean = np.asarray(m["pixel_mean"], dtype=np.float32).reshape(3, 1, 1)
        self.pixel_std = np.asarray(m["pixel_std"], dtype=np.float32).reshape(3, 1, 1)
        self.mask_threshold = float(m["mask_threshold"])
        self.logit_scale = float(m["logit_scale"])
        self.decoder_precision: str = str(m.get("decoder_precision", "fp32"))  # "int8": quantized decoder weights
        self.threads = threads
        self.providers = list(providers or ["CPUExecutionProvider"])
        self._sessions: dict[str, Any] = {}
        self._tokenizer: Any = None
        #: frame (pixels) -> (backbone + SAM-neck graph, CLIP-head graph); format version 1: one graph for both
        #: (None for the head), at the export's own frame only
        self.graphs: dict[int, tuple[str, str | None]] = (
            {int(f): (str(a), str(b)) for f, (a, b) in m["graphs"].items()} if "graphs" in m
            else {self.frame: (IMAGE_ENCODER_NAME, None)})
        self.frames = sorted(self.graphs)
        #: format version 2: the CLIP head is its own graph, run only for CLIP tasks, and it outputs the head's
        #: tokens, so the Predictor max-pools masks and reads the refinement's windows as the PyTorch model does
        self.has_head_tokens = self.graphs[self.frame][1] is not None
        self._roles = self._graph_roles()
        self._session(self.graphs[self.frame][0])  # fail early on a broken file

    # ------------------------------------------------------------------------------- sessions
    def _session(self, name: str) -> Any:  # noqa: ANN401 - onnxruntime.InferenceSession
        if name not in self._sessions:
            try:
                import onnxruntime as ort
            except ImportError as err:
                raise ImportError("the ONNX backend needs onnxruntime: pip install 'samclip[onnx]'") from err
            path = self.folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; re-export with `samclip export onnx`")
            opts = ort.SessionOptions()
            # an export runs several sessions one after another (image graphs per frame, CLIP heads, decoders):
            # threads that spin after their work would take the cores from the next session
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if self.threads:
                opts.intra_op_num_threads = int(self.threads)
                opts.inter_op_num_threads = 1
            try:
                session = ort.InferenceSession(str(path), opts, providers=self.providers)
            except Exception as err:  # noqa: BLE001 - onnxruntime's own exception types (InvalidProtobuf, Fail ...)
                raise ValueError(f"{path}: not a loadable ONNX graph ({type(err).__name__}: {err}); re-export with "
                                 "`samclip export onnx`") from None
            self._check_graph(name, session)
            self._sessions[name] = session
        return self._sessions[name]

    def _graph_roles(self) -> dict[str, tuple[str, Any]]:
        """Each graph file the manifest names -> (what it must be, its frame or multimask flag)."""
        roles: dict[str, tuple[str, Any]] = {}
        for frame, (encoder, head) in self.graphs.items():
            roles[encoder] = ("image", frame)
            if head is not None:
                roles[head] = ("clip_head", frame)
        for multimask, name in DECODER_NAMES.items():
            roles[name] = ("decoder", multimask)
        if self.manifest.get("cached_decoder"):
            spec = self.manifest["cached_decoder"]
            roles[spec["image_cache"]] = ("image_cache", None)
            roles[spec["multimask"]], roles[spec["single"]] = ("decoder", True), ("decoder", False)
        if self.manifest.get("text"):
            roles[self.manifest["text"]["encoder"]] = ("text", None)
        return roles

    def _check_graph(self, name: str, session: Any) -> None:  # noqa: ANN401
        """The graph in file ``name`` is the one the manifest says (inputs / outputs of that role and frame): files
        swapped between graphs of an export would otherwise answer with the wrong mask count, or fail later
        with onnxruntime's own errors."""
        role, arg = self._roles.get(name, (None, None))
        ins = {i.name: list(i.shape) for i in session.get_inputs()}
        outs = {o.name: list(o.shape) for o in session.get_outputs()}
        if role == "image":
            ok = ins.get("pixels") == [1, 3, arg, arg]
            what = f"the image graph at {arg} px (input pixels 1x3x{arg}x{arg})"
        elif role == "clip_head":
            grid = arg // self.patch_size
            ok = (ins.get("backbone_tokens") or [None] * 3)[1:3] == [grid, grid]
            what = f"the CLIP-head graph at {arg} px (backbone tokens on a {grid}x{grid} grid)"
        elif role == "decoder":
            masks = (outs.get("low_res_masks") or [None, None])[1]
            ok = masks == 1 if not arg else isinstance(masks, int) and masks > 1
            what = f"the {'multimask' if arg else 'single-mask'} prompt decoder"
        elif role == "image_cache":
            ok, what = "image_embeddings" in ins and "t2i_keys" in outs, "the decoder's image-cache graph"
        elif role == "text":
            ok, what = "input_ids" in ins, "the text encoder"
        else:
            return
        if not ok:
            raise ValueError(f"{self.folder / name}: not {what}, as {MANIFEST_NAME} says (inputs {ins}, outputs "
                             f"{outs}); the export's files were mixed up: re-export with `samclip export onnx`")

    def open_graphs(self) -> list[str]:
        """Load every graph a request at the export's own frame may need (image graphs, prompt decoders, text
        tower), so that a broken file is reported now rather than by the first request that reads it; the
        graphs at the CLIP tasks' other frames stay lazy. Returns their names."""
        names = [n for n in self.graphs[self.frame] if n is not None] + list(DECODER_NAMES.values())
        if self.has_image_cache:
            spec = self.manifest["cached_decoder"]
            names += [spec["image_cache"], spec["multimask"], spec["single"]]
        if self.has_text:
            names.append(self._text_spec()["encoder"])
        for name in names:
            self._session(name)
        missing = [n for n in self._roles if not (self.folder / n).is_file()]  # the lazy ones: present at least
        if missing:
            raise FileNotFoundError(f"{self.folder}: {', '.join(missing)} missing; re-export with "
                                    "`samclip export onnx`")
        return names

    # ------------------------------------------------------------------------------------ image
    def preprocess(self, image: Any, frame: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:  # noqa: ANN401
        """An image (HxWx3 uint8 RGB, see :func:`samclip.inference.to_rgb_uint8`) -> (1x3xSxS normalised,
        padded pixels, input_size (h, w) of the resized image inside the frame S: ``frame``, one of
        :attr:`frames`, default the export's own). No torch needed."""
        from ..inference.image_input import preprocess_shape, resize_uint8, to_rgb_uint8

        frame = self._frame(frame)
        arr = to_rgb_uint8(image)
        hw = preprocess_shape(arr.shape[0], arr.shape[1], frame)
        x = (resize_uint8(arr, hw).transpose(2, 0, 1).astype(np.float32) - self.pixel_mean) / self.pixel_std
        out = np.zeros((1, 3, frame, frame), dtype=np.float32)
        out[0, :, : hw[0], : hw[1]] = x
        return out, hw

    def valid_grid(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """Token rows / columns that overlap an image of ``input_size`` (h, w) inside the frame."""
        return math.ceil(input_size[0] / self.patch_size), math.ceil(input_size[1] / self.patch_size)

    def encode(self, pixels: np.ndarray, valid_grid: tuple[int, int] | None = None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """1x3xSxS normalised, padded pixels -> (image_embeddings 1xCxGxG, patch_embeddings 1xGxGxE,
        pooled 1xE); the CLIP embeddings are L2-normalised, the pooled one covers ``valid_grid`` tokens
        (default: the whole frame)."""
        out = self.encode_outputs(pixels, valid_grid)
        return out["image_embeddings"], out["patch_embeddings"], out["image_embedding_clip"]

    def encode_outputs(self, pixels: np.ndarray, valid_grid: tuple[int, int] | None = None,
                       frame: int | None = None) -> dict[str, np.ndarray]:
        """Both graphs of ``frame`` (one of :attr:`frames`; default the export's own): every output by name
        (``backbone_tokens`` and ``head_tokens`` 1xGxGxD too, where :attr:`has_head_tokens`)."""
        frame, valid = self._frame(frame), None
        if self.graphs[frame][1] is None:  # format version 1: one graph
            valid = self._valid(frame, valid_grid)
            session = self._session(self.graphs[frame][0])
            values = session.run(None, {"pixels": self._pixels(pixels, frame), "valid_grid": valid})
            return dict(zip((o.name for o in session.get_outputs()), values))
        emb, tokens = self.encode_image(pixels, frame)
        return {"image_embeddings": emb, "backbone_tokens": tokens, **self.encode_clip(tokens, valid_grid, frame)}

    def encode_image(self, pixels: np.ndarray, frame: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Format version 2: 1x3xSxS pixels -> (image_embeddings 1xCxGxG, backbone_tokens 1xGxGxD), the one
        backbone pass."""
        frame = self._frame(frame)
        if self.graphs[frame][1] is None:
            raise ValueError(f"{self.folder} is a format-version-1 export (one image graph): use encode_outputs")
        emb, tokens = self._session(self.graphs[frame][0]).run(None, {"pixels": self._pixels(pixels, frame)})
        return emb, tokens

    def encode_clip(self, backbone_tokens: np.ndarray, valid_grid: tuple[int, int] | None = None,
                    frame: int | None = None) -> dict[str, np.ndarray]:
        """Format version 2: backbone tokens of ``frame`` -> ``patch_embeddings``, ``image_embedding_clip`` (over
        ``valid_grid``, default the whole frame) and ``head_tokens``."""
        frame = self._frame(frame)
        name = self.graphs[frame][1]
        if name is None:
            raise ValueError(f"{self.folder} is a format-version-1 export (one image graph): use encode_outputs")
        session = self._session(name)
        tokens = np.ascontiguousarray(backbone_tokens, dtype=np.float32)
        values = session.run(None, {"backbone_tokens": tokens, "valid_grid": self._valid(frame, valid_grid)})
        return dict(zip((o.name for o in session.get_outputs()), values))

    def _frame(self, frame: int | None) -> int:
        frame = self.frame if frame is None else int(frame)
        if frame not in self.graphs:
            raise ValueError(f"this ONNX export has image graphs for the frames {self.frames}, not {frame}; "
                             "re-export (`samclip export onnx --size`) for another one")
        return frame

    def _pixels(self, pixels: np.ndarray, frame: int) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if pixels.shape != (1, 3, frame, frame):
            raise ValueError(f"pixels must be 1x3x{frame}x{frame} (an exported frame), got "
                             f"{tuple(pixels.shape)}; re-export with --size for another frame size")
        return pixels

    def _valid(self, frame: int, valid_grid: tuple[int, int] | None) -> np.ndarray:
        grid = frame // self.patch_size
        gh, gw = valid_grid if valid_grid is not None else (grid, grid)
        return np.array([min(max(int(gh), 1), grid), min(max(int(gw), 1), grid)], dtype=np.int64)

    # ------------------------------------------------------------------------------------- text
    @property
    def has_text(self) -> bool:
        """Whether the export holds the text tower (``text_encoder.onnx`` + ``tokenizer.json``)."""
        return bool(self.manifest.get("text"))

    def tokenize(self, texts: str | list[str]) -> np.ndarray:
        """Texts -> BxL int64 token ids, as the model's tokenizer makes them (start token, ids, end token, zero
        padding; too long: truncated, still ending with the end token): :class:`samclip.tokenizer.ClipTokenizer`
        on the export's ``tokenizer.json``. A runtime without samclip does the same with the manifest's ``text``
        entry (start / end ids, length) and any ``tokenizers`` port."""
        spec = self._text_spec()
        if self._tokenizer is None:
            from ..tokenizer import ClipTokenizer

            self._tokenizer = ClipTokenizer.from_file(self.folder / spec["tokenizer"],
                                                      context_length=int(spec["context_length"]))
        return self._tokenizer(texts).numpy()

    def encode_text(self, texts: str | list[str]) -> np.ndarray:
        """Texts -> BxE L2-normalised text embeddings (``text_encoder.onnx``), to compare with
        ``image_embedding_clip`` / ``patch_embeddings`` (times ``logit_scale``'s exp for logits)."""
        spec = self._text_spec()
        return self._session(spec["encoder"]).run(None, {"input_ids": self.tokenize(texts)})[0]

    def _text_spec(self) -> dict[str, Any]:
        if not self.has_text:
            raise ValueError(f"{self.folder} holds no text tower (exported from a model without a tokenizer, or "
                             "by an older samclip); re-export it with `samclip export onnx`")
        return self.manifest["text"]

    # ---------------------------------------------------------------------------------- prompts
    def run_decoder(self, image_embeddings: np.ndarray, point_coords: np.ndarray, point_labels: np.ndarray,
                    mask_input: np.ndarray | None = None, multimask_output: bool = True,
                    ) -> tuple[np.ndarray, np.ndarray]:
        """The raw decoder graph: BxNx2 points with labels -1 / 0 / 1 / 2 / 3 (segment-anything's ONNX
        convention), optional Bx1x4Gx4G mask logits -> (low_res_masks BxKx4Gx4G, iou_predictions BxK)."""
        emb = np.ascontiguousarray(image_embeddings, dtype=np.float32)
        coords = np.ascontiguousarray(point_coords, dtype=np.float32)
        labels = np.ascontiguousarray(point_labels, dtype=np.float32)
        if emb.ndim != 4 or emb.shape[0] != 1 or emb.shape[-1] != self.grid:
            raise ValueError(f"image_embeddings must be 1xCx{self.grid}x{self.grid}, got {tuple(emb.shape)}")
        if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
            raise ValueError(f"point_coords must be BxNx2 with point_labels BxN, got {tuple(coords.shape)} "
                             f"and {tuple(labels.shape)}")
        b = coords.shape[0]
        if mask_input is None:
            mask = np.zeros((b, 1, self.low_res, self.low_res), dtype=np.float32)
            has = np.zeros(1, dtype=np.float32)
        else:
            mask = np.ascontiguousarray(mask_input, dtype=np.float32)
            if mask.shape[1:] != (1, self.low_res, self.low_res) or mask.shape[0] not in (1, b):
                raise ValueError(f"mask_input must be Bx1x{self.low_res}x{self.low_res}, got {tuple(mask.shape)}")
            mask = np.ascontiguousarray(np.broadcast_to(mask, (b, *mask.shape[1:])))
            has = np.ones(1, dtype=np.float32)
        low, iou = self._session(DECODER_NAMES[bool(multimask_output)]).run(None, {
            "image_embeddings": emb, "point_coords": coords, "point_labels": labels,
            "mask_input": mask, "has_mask_input": has})
        return low, iou

    @property
    def has_image_cache(self) -> bool:
        """Whether the export holds the decoder's first-layer image cache graphs (``decoder_image_cache.onnx`` and
        the cached decoders; exports since session 18)."""
        return bool(self.manifest.get("cached_decoder"))

    def image_cache(self, image_embeddings: np.ndarray) -> tuple[np.ndarray, ...]:
        """1xCxGxG image embeddings -> the decoder's first-layer view of them (``image_tokens``, ``t2i_keys``,
        ``t2i_values``, ``i2t_queries``), computed once per image: pass it to :meth:`decode` as ``image_cache``
        for every prompt without a mask input."""
        if not self.has_image_cache:
            raise ValueError(f"{self.folder} holds no decoder image cache graph (an older export); re-export it with "
                             "`samclip export onnx`")
        emb = np.ascontiguousarray(image_embeddings, dtype=np.float32)
        if emb.ndim != 4 or emb.shape[0] != 1 or emb.shape[-1] != self.grid:
            raise ValueError(f"image_embeddings must be 1xCx{self.grid}x{self.grid}, got {tuple(emb.shape)}")
        spec = self.manifest["cached_decoder"]
        return tuple(self._session(spec["image_cache"]).run(None, {"image_embeddings": emb}))

    def decode(self, image_embeddings: np.ndarray, point_coords: Any = None, point_labels: Any = None,  # noqa: ANN401
               boxes: Any = None, mask_input: Any = None, multimask_output: bool = True,  # noqa: ANN401
               image_cache: tuple[np.ndarray, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`samclip.models.Sam.decode` on onnxruntime: points BxNx2 / labels BxN (1, 0, -1), boxes Bx4
        XYXY, mask_input Bx1x4Gx4G, all in input-frame pixels -> (low-res logits BxKx4Gx4G, IoU BxK).
        ``image_cache``: :meth:`image_cache` of these embeddings; prompts without a mask input then run the
        cached decoder (the same outputs, faster)."""
        parts_c, parts_l, b = [], [], None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels are required with point_coords")
            c = np.asarray(point_coords, dtype=np.float32)
            lab = np.asarray(point_labels, dtype=np.float32)
            if c.ndim != 3 or c.shape[-1] != 2 or lab.shape != c.shape[:2]:
                raise ValueError(f"point_coords must be BxNx2 with point_labels BxN, got {c.shape} and {lab.shape}")
            parts_c.append(c)
            parts_l.append(lab)
            b = c.shape[0]
        if boxes is not None:
            bx = np.asarray(boxes, dtype=np.float32)
            if bx.ndim != 2 or bx.shape[-1] != 4:
                raise ValueError(f"boxes must be Bx4 XYXY, got shape {bx.shape}")
            parts_c.append(bx.reshape(-1, 2, 2))
            parts_l.append(np.tile(np.array([[2.0, 3.0]], dtype=np.float32), (bx.shape[0], 1)))
            b = bx.shape[0] if b is None else b
        elif parts_c:  # the PyTorch prompt encoder pads points with (0, 0) of label -1 when there is no box
            parts_c.append(np.zeros((b, 1, 2), dtype=np.float32))
            parts_l.append(-np.ones((b, 1), dtype=np.float32))
        if mask_input is not None:
            mask_input = np.asarray(mask_input, dtype=np.float32)
            b = mask_input.shape[0] if b is None else b
        if b is None:
            b = 1
        if len({p.shape[0] for p in parts_c}) > 1:
            raise ValueError(f"prompt batch sizes differ: {[p.shape[0] for p in parts_c]}")
        if parts_c:
            coords, labels = np.concatenate(parts_c, axis=1), np.concatenate(parts_l, axis=1)
        else:  # no sparse prompt at all (mask only / nothing): zero points, like the PyTorch model
            coords, labels = np.zeros((b, 0, 2), dtype=np.float32), np.zeros((b, 0), dtype=np.float32)
        if image_cache is not None and mask_input is None:
            spec = self.manifest["cached_decoder"]
            feeds = dict(zip(spec["image_cache_outputs"], image_cache))
            name = spec["multimask" if multimask_output else "single"]
            low, iou = self._session(name).run(None, {**feeds, "point_coords": np.ascontiguousarray(coords),
                                                      "point_labels": np.ascontiguousarray(labels)})
            return low, iou
        return self.run_decoder(image_embeddings, coords, labels, mask_input, multimask_output)

    # ------------------------------------------------------------------------------------ checks
    def check_model(self, model: Any) -> None:  # noqa: ANN401 - a SamClip
        """ValueError unless ``model`` has the exported architecture and (by a weight fingerprint) weights."""
        from .onnx_export import _fingerprint

        if model.config.to_dict() != _jsonable(self.manifest["config"]):
            raise ValueError(f"the ONNX export in {self.folder} was made from a model with another architecture "
                             "than the one given; re-export it from this model")
        ours = _fingerprint(model)
        theirs = self.manifest.get("fingerprint") or []
        if len(ours) != len(theirs) or any(abs(a - b) > 1e-3 * max(1.0, abs(b)) for a, b in zip(ours, theirs)):
            raise ValueError(f"the ONNX export in {self.folder} was made from other weights than the given model; "
                             "re-export it from this model")

    def __repr__(self) -> str:
        return (f"OnnxBackend({str(self.folder)!r}, frame={self.frame}, grid={self.grid}, "
                f"decoder_precision={self.decoder_precision!r})")


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples into lists; turn them back so a manifest config compares equal to ``to_dict()``."""
    return {k: _jsonable(v) if isinstance(v, dict) else tuple(v) if isinstance(v, list) else v
            for k, v in config.items()}


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``samclip_onnx.json`` of an export folder; FileNotFoundError / ValueError that say what is wrong."""
    if not isinstance(folder, str | os.PathLike):
        raise TypeError(f"onnx_dir must be a folder written by `samclip export onnx` (str or os.PathLike), got "
                        f"{type(folder).__name__}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected the output of `samclip export onnx`)")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST_NAME}: not a samclip ONNX export "
                                "(write one with `samclip export onnx --model <name|folder> --out DIR`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a samclip ONNX manifest (format {FORMAT!r} expected)")
    if manifest.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise ValueError(f"{path} has format_version {manifest.get('format_version')!r}; this samclip reads "
                         f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))} (writes {FORMAT_VERSION}); re-export "
                         "the model")
    missing = [k for k in ("frame", "grid", "patch_size", "low_res", "pixel_mean", "pixel_std", "mask_threshold",
                           "logit_scale", "config") if k not in manifest]
    if missing:
        raise ValueError(f"{path} lacks the fields {missing}; re-export the model")
    _check_manifest_values(manifest, path)
    return manifest


def _check_manifest_values(m: dict[str, Any], path: Path) -> None:
    """The manifest's values (not only its keys): ValueError naming the field, not a TypeError or KeyError from
    deep in the backend; graph file names must be plain names inside the export folder."""
    def positive_int(key: str) -> int:
        v = m[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{path}: {key} must be a positive integer, got {v!r}")
        return v

    def plain_name(v: Any, key: str) -> None:  # noqa: ANN401
        if not isinstance(v, str) or not v or Path(v).name != v or v in (".", ".."):
            raise ValueError(f"{path}: {key} must name a file inside the export folder, got {v!r}")

    def numbers(key: str, n: int | None = None, positive: bool = False) -> None:
        v = m[key] if isinstance(m[key], list) else [m[key]]
        ok = all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
                 for x in v) and (n is None or len(v) == n)
        if not ok or (n is not None and not isinstance(m[key], list)):
            raise ValueError(f"{path}: {key} must be {n or 'a'} finite number{'s' if n else ''}"
                             f"{' > 0' if positive else ''}, got {m[key]!r}")

    frame, grid, patch = positive_int("frame"), positive_int("grid"), positive_int("patch_size")
    positive_int("low_res")
    if frame != grid * patch:
        raise ValueError(f"{path}: frame {frame} is not grid {grid} x patch_size {patch}")
    numbers("pixel_mean", 3)
    numbers("pixel_std", 3, positive=True)
    numbers("mask_threshold")
    numbers("logit_scale")
    if not isinstance(m["config"], dict):
        raise ValueError(f"{path}: config must be an object (the model's config), got {type(m['config']).__name__}")
    if "graphs" in m:
        graphs = m["graphs"]
        if not isinstance(graphs, dict) or str(frame) not in graphs:
            raise ValueError(f"{path}: graphs must map each frame (its own, {frame}, included) to [image graph, "
                             f"CLIP-head graph], got {graphs!r}")
        for key, pair in graphs.items():
            if not (isinstance(key, str) and key.isdigit() and int(key) % patch == 0 and int(key) > 0):
                raise ValueError(f"{path}: graphs key {key!r} is not a frame (a multiple of the patch size {patch})")
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError(f"{path}: graphs[{key!r}] must be [image graph, CLIP-head graph], got {pair!r}")
            for name in pair:
                plain_name(name, f"graphs[{key!r}]")
    for key, fields in (("cached_decoder", ("image_cache", "multimask", "single")), ("text", ("encoder", "tokenizer"))):
        spec = m.get(key)
        if spec in (None, False):
            continue
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: {key} must be an object or null, got {spec!r}")
        for f in fields:
            plain_name(spec.get(f), f"{key}.{f}")


__all__ = ["OnnxBackend", "read_manifest"]
