"""Validation of the predictor's user inputs: labels, prompt templates, numeric arrays."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.captions import class_prompt_templates


def check_labels(labels: Any, what: str = "labels") -> list[str]:
    """A list of distinct non-empty class names, or ValueError saying what is wrong (``what``: its name)."""
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


def check_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    """Prompt templates, each with one ``{}`` for the class name; None: the default ensemble."""
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


def content_key(name: str, prompts: Sequence[str]) -> str:
    """The text-embedding cache key of a class: a hash of its name and its filled prompts."""
    return hashlib.sha256(json.dumps([name, list(prompts)]).encode("utf-8")).hexdigest()


def float_tensor(x: Any, name: str) -> torch.Tensor:
    """Array-like -> float64 CPU tensor; ValueError for non-numeric or non-finite input."""
    try:
        t = x.detach().cpu().double() if isinstance(x, torch.Tensor) else torch.from_numpy(
            np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got {type(x).__name__}") from err
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t

