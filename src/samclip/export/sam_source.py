"""The SAM side of what a SAM-format export is asked for: a merged model's (backbone, SAM neck, prompt encoder,
mask decoder) or a SAM's, from a model object, a registered name or a path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..models.sam import Sam
from ..models.samclip import SamClip

KINDS = ("auto", "model", "sam")


def _is_merged_folder(path: Path) -> bool:
    from ..checkpoint import read_config

    try:
        return path.is_dir() and read_config(path)["model_type"] == "samclip"
    except (OSError, ValueError):  # not one of our folders (CheckpointError is a ValueError)
        return False


def load_sam_side(model: Any, kind: str = "auto") -> tuple[Sam, str | None, str]:  # noqa: ANN401
    """(SAM, its source, "samclip" or "sam") for ``model``: a :class:`Sam` or :class:`SamClip` (source None), or
    a name / path read as ``kind`` says: "model" a merged model (:func:`samclip.load_model`), "sam" a SAM
    checkpoint in any format :func:`samclip.load_sam` reads, "auto" a merged model where the source is one (a
    registered merged name or a merged model folder), else a SAM. Loading errors name the source."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(model, SamClip):
        return model.sam, None, "samclip"
    if isinstance(model, Sam):
        return model, None, "sam"
    if isinstance(model, nn.Module):
        raise TypeError(f"expected a SAM or merged SamClip model, got {type(model).__name__}")
    if not isinstance(model, str | os.PathLike):
        raise TypeError(f"model must be a model, a name or a path, got {type(model).__name__}")
    from .. import hub, pretrained
    from ..factory import load_model, load_sam

    name = str(model)
    if kind == "auto":
        kind = "model" if pretrained.is_registered("samclip", name) or _is_merged_folder(Path(name)) else "sam"
    named = pretrained.is_registered("sam" if kind == "sam" else "samclip", name) or hub.is_hub_id(name)
    source = name if named else str(Path(name).resolve())
    if kind == "model":
        return load_model(model).sam, source, "samclip"
    return load_sam(model), source, "sam"
