"""The one factory: build models from presets or configs, load them from any supported checkpoint.

``source`` for the loaders may be
- a registered weights name (``tiny-synthetic``, ``sam-vit-b``, ``clip-vit-l-14`` ...; see
  ``samclip.pretrained``) or a Hugging Face hub id (``hf-hub:facebook/sam-vit-base``), downloaded once
  into the cache (``samclip.hub``),
- one of our folders (``config.json`` + ``model.safetensors``),
- a foreign checkpoint file or folder (segment-anything ``.pth``, Hugging Face folder or
  ``.safetensors``, OpenAI / open_clip state dicts); conversion happens in ``samclip.convert``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from . import hub, pretrained
from .checkpoint import CheckpointError, load_folder, load_state_strict, save_folder
from .models import CLIP, ClipConfig, Sam, SamClip, SamClipConfig, SamConfig, clip_preset, sam_preset
from .tokenizer import ClipTokenizer

TOKENIZER_NAME = "tokenizer.json"


def create_sam(config: str | SamConfig) -> Sam:
    """A randomly initialised SAM from a preset name or a config."""
    return Sam.from_config(sam_preset(config) if isinstance(config, str) else config)


def create_clip(config: str | ClipConfig) -> CLIP:
    """A randomly initialised CLIP from a preset name or a config."""
    return CLIP.from_config(clip_preset(config) if isinstance(config, str) else config)


def _resolve(kind: str, source: str | os.PathLike) -> Path:
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"load_{'model' if kind == 'samclip' else kind}: source must be a registered name, a path or "
                        f"an hf-hub:<org>/<name> id (str or os.PathLike), got {type(source).__name__}")
    if isinstance(source, str) and not source.strip():
        raise ValueError(f"load_{'model' if kind == 'samclip' else kind}: source is an empty string")
    if isinstance(source, str) and (hub.is_hub_id(source) or pretrained.is_registered(kind, source)):
        return pretrained.resolve(kind, source)
    path = Path(source)
    if not path.exists():
        known = ", ".join(pretrained.list_pretrained(kind))
        hint = ""
        if isinstance(source, str) and source.count("/") == 1 and not source.startswith((".", "/")):
            hint = f"; a Hugging Face repository is named hf-hub:{source}"
        raise FileNotFoundError(f"{source!s}: no such file or folder, and not a registered name ({known}){hint}")
    return path


def _build(cls: type, cfg: Any, path: Path) -> Any:
    """``cls.from_config(cfg)``, with a config that cannot describe a network (a zero patch size, say) reported
    as a :class:`CheckpointError` naming the checkpoint."""
    try:
        return cls.from_config(cfg)
    except (TypeError, ValueError, ZeroDivisionError, AttributeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its config does not describe a buildable {cls.__name__} "
                              f"({type(err).__name__}: {err})") from None


def _finish(model: torch.nn.Module, device: str | torch.device | None, dtype: torch.dtype | None):  # noqa: ANN202
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def load_sam(
    source: str | os.PathLike,
    *,
    config: SamConfig | str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Sam:
    """Load a SAM from a name, our folder, or a segment-anything / Hugging Face checkpoint.

    ``config`` (a preset name or config) overrides the architecture inferred from the checkpoint.
    The model is returned in eval mode.
    """
    from .convert import load_sam_checkpoint

    path = _resolve("sam", source)
    config = config or (pretrained.preset_for("sam", source) if isinstance(source, str) else None)
    cfg = sam_preset(config) if isinstance(config, str) else config
    cfg, state, fmt = load_sam_checkpoint(path, cfg)
    model = _build(Sam, cfg, path)
    load_state_strict(model, state, f"SAM ({fmt} format, image encoder {cfg.image_encoder.embed_dim}-d)")
    return _finish(model, device, dtype)


def load_clip(
    source: str | os.PathLike,
    *,
    config: ClipConfig | str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_torchscript: bool = False,
) -> CLIP:
    """Load a CLIP from a name, our folder, or an OpenAI / open_clip / Hugging Face checkpoint.

    The tokenizer found beside the weights (if any) is attached as ``model.tokenizer``.
    ``trust_torchscript`` allows OpenAI's TorchScript release files (read by ``torch.jit.load``).
    """
    from .convert import load_clip_checkpoint

    path = _resolve("clip", source)
    config = config or (pretrained.preset_for("clip", source) if isinstance(source, str) else None)
    cfg = clip_preset(config) if isinstance(config, str) else config
    cfg, state, tokenizer, fmt = load_clip_checkpoint(path, cfg, trust_torchscript=trust_torchscript)
    model = _build(CLIP, cfg, path)
    load_state_strict(model, state, f"CLIP ({fmt} format, vision width {cfg.vision.width})")
    model.tokenizer = tokenizer
    return _finish(model, device, dtype)


def load_model(
    source: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> SamClip:
    """Load a merged SAM-CLIP model from a registered name (``tiny-synthetic``), a saved folder, or a hub
    repository holding one (``hf-hub:<org>/<name>``)."""
    path = _resolve("samclip", source)
    kind, cfg_dict, state = load_folder(path)
    if kind != "samclip":
        raise CheckpointError(f"{path} holds a {kind!r} model, not a merged samclip model")
    try:
        cfg = SamClipConfig.from_dict(cfg_dict)
    except ValueError as err:
        raise CheckpointError(f"{path}: config.json: {err}") from None
    model = _build(SamClip, cfg, path)
    load_state_strict(model, state, "the merged SAM-CLIP model")
    model.tokenizer = read_tokenizer(path, cfg.text.context_length)
    return _finish(model, device, dtype)


def save_pretrained(model: Sam | CLIP | SamClip, folder: str | os.PathLike) -> Path:
    """Write ``model`` in our self-describing format (plus ``tokenizer.json`` when it has one)."""
    if isinstance(model, SamClip):
        kind = "samclip"
    elif isinstance(model, Sam):
        kind = "sam"
    elif isinstance(model, CLIP):
        kind = "clip"
    else:
        raise TypeError(f"cannot save {type(model).__name__}; expected Sam, CLIP or SamClip")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"save_pretrained: {folder} exists and is not a folder (a model is saved as a folder: "
                              "config.json + model.safetensors)")
    tok: ClipTokenizer | None = getattr(model, "tokenizer", None)
    extra = {TOKENIZER_NAME: tok.to_json().encode("utf-8")} if tok is not None else None
    return save_folder(folder, kind, model.config.to_dict(), model.state_dict(), extra)


def read_tokenizer(folder: str | os.PathLike, context_length: int) -> ClipTokenizer | None:
    """The ``tokenizer.json`` of one of our folders, or None."""
    path = Path(folder) / TOKENIZER_NAME
    return ClipTokenizer.from_file(path, context_length) if path.is_file() else None


__all__ = [
    "CheckpointError", "create_clip", "create_sam", "load_clip", "load_model", "load_sam", "read_tokenizer",
    "save_pretrained",
]
