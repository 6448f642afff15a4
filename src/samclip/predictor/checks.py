"""Validation of the predictor's user inputs: labels, prompt templates, numeric arrays."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from ..data.captions import class_prompt_templates

_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def checked_flags(fn: _Fn) -> _Fn:
    """Decorate a public method so that its parameters annotated ``bool`` (or ``bool | None``) take only True /
    False (numpy's too) or None where allowed: TypeError naming the parameter otherwise, instead of reading
    ``multimask_output="no"`` or ``refine=0.5`` by its truthiness."""
    sig = inspect.signature(fn)
    flags = {name: "None" in str(p.annotation) for name, p in sig.parameters.items()
             if str(p.annotation).replace(" ", "") in ("bool", "bool|None")}

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name, value in sig.bind_partial(*args, **kwargs).arguments.items():
            if name in flags and not (isinstance(value, bool | np.bool_) or (value is None and flags[name])):
                allowed = "True, False or None" if flags[name] else "True or False"
                raise TypeError(f"{fn.__name__}: {name} must be {allowed}, got {value!r}")
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_pooling(pooling: Any, poolings: Sequence[str]) -> str:  # noqa: ANN401
    """``pooling`` if it is one of ``poolings`` (the Predictor's ``MASK_POOLINGS``), ValueError otherwise."""
    if pooling not in poolings:
        raise ValueError(f"pooling must be one of {', '.join(map(repr, poolings))}, got {pooling!r}")
    return pooling


def label_key(label: str) -> str:
    """What the text encoder sees of a class name: Unicode NFC, whitespace runs as one space, lower case (the
    CLIP tokenizer's normalisation), so ``"Star"`` and ``" star "`` are one class."""
    return " ".join(unicodedata.normalize("NFC", label).split()).lower()


def check_text(text: Any, what: str) -> str:
    """A non-empty string the tokenizer can read (no lone surrogates, e.g. from undecodable command-line bytes),
    with something visible in it and no control characters (a NUL, a newline)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} must be a non-empty string, got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {text!r} is not valid text (undecodable bytes); use UTF-8") from None
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise ValueError(f"{what} {text!r} holds control characters")
    if all(unicodedata.category(c)[0] in "ZC" for c in text):  # only spaces and invisible format characters
        raise ValueError(f"{what} {text!r} has no visible characters")
    return text


def check_labels(labels: Any, what: str = "labels") -> list[str]:
    """A list of distinct non-empty class names, or ValueError saying what is wrong (``what``: its name).
    Names that differ only in case or spacing are duplicates (:func:`label_key`)."""
    if isinstance(labels, str):
        raise ValueError(f"{what} must be a list of strings, not a single string; pass [{labels!r}]")
    if isinstance(labels, Mapping | set | frozenset):  # a dict's keys or a set's order would decide silently
        raise ValueError(f"{what} must be a list of strings (in order), got a {type(labels).__name__}")
    try:
        out = list(labels)
    except TypeError as err:
        raise ValueError(f"{what} must be a list of strings, got {type(labels).__name__}") from err
    if not out:
        raise ValueError(f"{what} is empty; pass at least one class name")
    seen: dict[str, str] = {}
    for label in out:
        check_text(label, f"every entry of {what}")
        key = label_key(label)
        if key in seen:
            same = "" if seen[key] == label else f" (the same class as {seen[key]!r} to the text encoder, which " \
                                                  "ignores case and spacing)"
            raise ValueError(f"duplicate label {label!r} in {what}{same}")
        seen[key] = label
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


def check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    """An integer (not a bool, not 2.5) in ``[low, high]``, or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}" if high is not None
                         else f"{name} must be >= {low}, got {value}")
    return int(value)


def check_fraction(value: Any, name: str) -> float:
    """A number in [0, 1] (NaN is not), or ValueError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


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

