"""Read SAM and CLIP checkpoints of every supported format into our layout.

:func:`load_sam_checkpoint` and :func:`load_clip_checkpoint` are what ``samclip.load_sam`` /
``samclip.load_clip`` call. They recognise the format from the folder contents or the file bytes and
key names (never from the suffix alone), convert the keys, and return a config: the one passed in,
else the one stored with the weights, else one inferred from the tensor shapes.

SAM formats: our folder; segment-anything ``.pth`` (see :mod:`.segment_anything`); Hugging Face
SAM folders and ``.safetensors`` (:mod:`.hf_sam`).
CLIP formats: our folder (+ ``tokenizer.json``); OpenAI state dicts / TorchScript archives and
open_clip checkpoints (:mod:`.openai_clip`); Hugging Face CLIP folders and ``.safetensors``
(:mod:`.hf_clip`).

Every pickle is read with ``torch.load(weights_only=True)`` (:mod:`.safe_load`); every failure is one
:class:`~samclip.checkpoint.CheckpointError` with a short message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from ..checkpoint import WEIGHTS_NAME, CheckpointError, is_samclip_folder, load_safetensors, read_config
from ..models import CLIP, ClipConfig, Sam, SamConfig, clip_preset, sam_preset
from ..tokenizer import ClipTokenizer
from .detect import (
    CLIP_LAYOUTS,
    SAM_LAYOUTS,
    SUPPORTED_CLIP,
    SUPPORTED_SAM,
    detect_layout,
    meta_state_keys,
    unrecognised,
    wrong_model,
)
from .hf_clip import clip_config_from_hf, hf_clip_to_ours, read_hf_tokenizer
from .hf_sam import hf_sam_to_ours, read_hf_config, sam_config_from_hf
from .openai_clip import from_openai, infer_clip_config, to_openai
from .safe_load import HF_WEIGHT_FILES, read_hf_weights, read_state_file
from .segment_anything import from_segment_anything, infer_sam_config, to_segment_anything

State = dict[str, torch.Tensor]

OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _samclip_folder(path: Path, want: str) -> tuple[dict, State]:
    meta = read_config(path)
    kind = meta.get("model_type")
    if kind != want:
        hint = f"; load it with samclip.load_{kind}" if kind in ("sam", "clip") else ""
        raise CheckpointError(f"{path}: a samclip {kind!r} checkpoint, not {want!r}{hint}")
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS_NAME} is missing")
    return meta["config"], load_safetensors(weights)


def _has_weights(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / n).is_file() or (folder / f"{n}.index.json").is_file() for n in names)


# ---------------------------------------------------------------------------------------------- SAM
def _sam_wrong_model(
    path: Path, layout: str, keys: Iterable[str], config: SamConfig | None
) -> CheckpointError:
    cfg = config or sam_preset("sam-vit-b")
    return wrong_model(path, layout, keys, meta_state_keys(lambda: Sam.from_config(cfg)), "a SAM model")


def load_sam_checkpoint(path: str | Path, config: SamConfig | None = None) -> tuple[SamConfig, State, str]:
    """Read a SAM checkpoint -> (config, state dict in our layout, format name).

    Formats (format names in brackets): our folder [``samclip``]; a segment-anything state dict
    ``.pth`` or ``.safetensors`` [``segment-anything``]; a Hugging Face SAM folder or ``.safetensors``
    [``huggingface``]. ``config`` overrides the stored or inferred architecture.
    """
    path = Path(path)
    if path.is_dir():
        if is_samclip_folder(path):
            stored, state = _samclip_folder(path, "sam")
            return config or SamConfig.from_dict(stored), state, "samclip"
        if not _has_weights(path, HF_WEIGHT_FILES):
            supported = "; ".join(SUPPORTED_SAM)
            raise CheckpointError(f"{path}: not a SAM checkpoint folder; supported: {supported}")
        hf = read_hf_config(path)
        state = read_hf_weights(path)
        layout = detect_layout(state)
        if layout in CLIP_LAYOUTS or hf.get("model_type") == "clip":
            raise _sam_wrong_model(path, layout or "hf-clip", state.keys(), config)
        if layout == "hf-sam":
            state = hf_sam_to_ours(state)
            if config is None:
                config = sam_config_from_hf(hf) if hf.get("model_type") == "sam" else infer_sam_config(state)
            return config, state, "huggingface"
        if layout == "segment-anything":
            return config or infer_sam_config(state), from_segment_anything(state), "segment-anything"
        raise unrecognised(path, state.keys(), SUPPORTED_SAM, "SAM")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")

    state, _container = read_state_file(path, supported=SUPPORTED_SAM)
    layout = detect_layout(state)
    if layout in CLIP_LAYOUTS:
        raise _sam_wrong_model(path, layout, state.keys(), config)
    if layout == "segment-anything":
        state = from_segment_anything(state)
        return config or infer_sam_config(state), state, "segment-anything"
    if layout == "hf-sam":
        state = hf_sam_to_ours(state)
        return config or infer_sam_config(state), state, "huggingface"
    raise unrecognised(path, state.keys(), SUPPORTED_SAM, "SAM")


# --------------------------------------------------------------------------------------------- CLIP
def _clip_wrong_model(
    path: Path, layout: str, keys: Iterable[str], config: ClipConfig | None
) -> CheckpointError:
    cfg = config or clip_preset("clip-vit-b-16")
    return wrong_model(path, layout, keys, meta_state_keys(lambda: CLIP.from_config(cfg)), "a CLIP model")


def _open_clip_act(folder: Path) -> str | None:
    """``gelu`` / ``quick_gelu`` from an open_clip hub folder's ``open_clip_config.json``."""
    path = folder / "open_clip_config.json"
    if not path.is_file():
        return None
    try:
        model_cfg = json.loads(path.read_text()).get("model_cfg", {})
    except (json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a valid open_clip config ({e})") from e
    return "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"


def _clip_from_state(
    path: Path, state: State, config: ClipConfig | None, container: str, act: str = "quick_gelu"
) -> tuple[ClipConfig, State, str]:
    layout = detect_layout(state)
    if layout in SAM_LAYOUTS:
        raise _clip_wrong_model(path, layout, state.keys(), config)
    if layout == "hf-clip":
        state = hf_clip_to_ours(state)
        return config or infer_clip_config(state, act), state, "huggingface"
    if layout == "openai-clip":
        custom_text = any(k.startswith("text.") for k in state)
        state = from_openai(state)
        if container == "torchscript":
            fmt = "openai-torchscript"
        elif container == "torch-wrapped" or custom_text:
            fmt = "open_clip"
        else:
            fmt = "openai"
        return config or infer_clip_config(state, act), state, fmt
    raise unrecognised(path, state.keys(), SUPPORTED_CLIP, "CLIP")


def load_clip_checkpoint(
    path: str | Path, config: ClipConfig | None = None, trust_torchscript: bool = False
) -> tuple[ClipConfig, State, ClipTokenizer | None, str]:
    """Read a CLIP checkpoint -> (config, state dict in our layout, tokenizer or None, format name).

    Formats (format names in brackets): our folder [``samclip``], with its ``tokenizer.json``; an
    OpenAI state dict ``.pt`` / ``.safetensors`` [``openai``] or TorchScript release file
    [``openai-torchscript``, only with ``trust_torchscript=True``]; an open_clip checkpoint
    (``{"state_dict": ...}``, ``module.`` prefixes, or an open_clip hub folder, with the tokenizer files
    beside its weights when there are any) [``open_clip``]; a
    Hugging Face CLIP folder (with its tokenizer) or ``.safetensors`` [``huggingface``].

    Architectures of foreign files without a config are inferred from shapes with QuickGELU (OpenAI's
    activation); open_clip models trained with GELU need ``config`` (see :mod:`.openai_clip`).
    """
    from ..factory import read_tokenizer

    path = Path(path)
    if path.is_dir():
        if is_samclip_folder(path):
            stored, state = _samclip_folder(path, "clip")
            cfg = config or ClipConfig.from_dict(stored)
            return cfg, state, read_tokenizer(path, cfg.text.context_length), "samclip"
        if _has_weights(path, OPEN_CLIP_WEIGHT_FILES):
            name = next(n for n in OPEN_CLIP_WEIGHT_FILES if (path / n).is_file())
            state, container = read_state_file(path / name, trust_torchscript)
            cfg, state, _ = _clip_from_state(path, state, config, container, _open_clip_act(path) or "gelu")
            return cfg, state, read_hf_tokenizer(path, cfg.text.context_length), "open_clip"
        if not _has_weights(path, HF_WEIGHT_FILES):
            supported = "; ".join(SUPPORTED_CLIP)
            raise CheckpointError(f"{path}: not a CLIP checkpoint folder; supported: {supported}")
        hf = read_hf_config(path)
        state = read_hf_weights(path)
        if hf.get("model_type") == "sam":
            raise _clip_wrong_model(path, "hf-sam", state.keys(), config)
        if hf.get("model_type") == "clip" and detect_layout(state) == "hf-clip":
            state = hf_clip_to_ours(state)
            cfg = config or clip_config_from_hf(hf)
            return cfg, state, read_hf_tokenizer(path, cfg.text.context_length), "huggingface"
        cfg, state, fmt = _clip_from_state(path, state, config, "torch")
        return cfg, state, read_hf_tokenizer(path, cfg.text.context_length), fmt
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    state, container = read_state_file(path, trust_torchscript, supported=SUPPORTED_CLIP)
    cfg, state, fmt = _clip_from_state(path, state, config, container)
    return cfg, state, None, fmt


__all__ = [
    "CheckpointError", "clip_config_from_hf", "from_openai", "from_segment_anything", "hf_clip_to_ours",
    "hf_sam_to_ours", "infer_clip_config", "infer_sam_config", "load_clip_checkpoint", "load_sam_checkpoint",
    "sam_config_from_hf", "to_openai", "to_segment_anything",
]
