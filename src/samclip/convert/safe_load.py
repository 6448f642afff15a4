"""Safe reading of foreign checkpoint files into flat ``{name: tensor}`` dicts.

Formats, recognised by their bytes rather than their suffix:

- **safetensors** (``.safetensors``): an 8-byte little-endian header length, then a JSON header.
  Read with ``safetensors``; a truncated or corrupt file gives :class:`CheckpointError`.
- **PyTorch zip** (``torch.save`` since 1.6: ``.pth`` / ``.pt`` / ``.bin``) and **legacy PyTorch
  pickles**: read ONLY through ``torch.load(path, map_location="cpu", weights_only=True)``, whose
  restricted unpickler refuses any global other than tensors and plain containers. A pickle that
  tries to call a function (``os.system`` ...) is refused before anything runs, and reported as one
  :class:`CheckpointError`.
- **TorchScript archives** (OpenAI's CLIP release files): zip files with ``code/`` and
  ``constants.pkl`` entries. Loading one runs ``torch.jit.load``, so it is refused unless the caller
  passes ``trust_torchscript=True``.

Checkpoints are unwrapped from the usual training wrappers (``{"state_dict": ...}``,
``{"model": ...}``, ``{"module": ...}``) and the ``module.`` (DataParallel) / ``_orig_mod.``
(``torch.compile``) prefixes are stripped. Hugging Face folders may hold ``model.safetensors``,
``pytorch_model.bin`` or a sharded set with a ``*.index.json``.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, load_safetensors

#: wrapper keys of training checkpoints, tried in this order
WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "weights")
#: prefixes added by DataParallel / DistributedDataParallel / torch.compile
STRIP_PREFIXES = ("module.", "_orig_mod.")

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def sniff(path: Path) -> str:
    """``"safetensors"``, ``"torchscript"``, ``"torch-zip"``, ``"pickle"`` or ``"unknown"``."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from e
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n < 100_000_000:
            return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "torchscript" if is_torchscript_archive(path) else "torch-zip"
    if head[:1] == b"\x80":  # pickle protocol >= 2 (legacy torch.save files start with one too)
        return "pickle"
    return "unknown"


def is_torchscript_archive(path: Path) -> bool:
    """True for a ``torch.jit.save`` archive (it carries TorchScript code and constants)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _short_reason(err: BaseException) -> str:
    """The informative line of torch's long 'Weights only load failed' message."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if re.search(r"GLOBAL|Unsupported|WeightsUnpickler error:.+", ln):
            return ln[:200]
    return (lines[0] if lines else type(err).__name__)[:200]


def torch_load_weights_only(path: Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with readable errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to unpickle - the file holds objects other than tensors and plain containers "
            f"(a pickled model object, or possibly malicious code); nothing from it was run. "
            f"({_short_reason(e)})"
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, AttributeError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{_short_reason(e)}") from e


def load_torchscript_state(path: Path) -> dict[str, torch.Tensor]:
    """State dict of a TorchScript archive via ``torch.jit.load`` (only for trusted files)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a loadable TorchScript archive: {_short_reason(e)}") from e
    return dict(module.state_dict())


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and any(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any, path: Path | str = "checkpoint") -> tuple[dict[str, torch.Tensor], bool]:
    """Find the tensor dict inside a (possibly wrapped) checkpoint object.

    Returns (state dict with only tensor entries and prefixes stripped, whether it was wrapped or
    prefixed - the signature of a training checkpoint such as open_clip's).
    """
    wrapped = False
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None or (_is_state_dict(obj) and not _is_state_dict(inner)):
            break
        obj, wrapped = inner, True
    if not _is_state_dict(obj):
        kind = type(obj).__name__
        keys = ", ".join(list(map(str, obj))[:5]) if isinstance(obj, dict) else ""
        raise CheckpointError(
            f"{path}: holds no tensors (found a {kind}{' with keys ' + keys if keys else ''}); "
            "expected a state dict"
        )
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            wrapped = True
    return state, wrapped


def read_state_file(
    path: Path, trust_torchscript: bool = False, supported: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], str]:
    """One checkpoint file -> (state dict, container) where container is ``safetensors``,
    ``torch``, ``torch-wrapped`` (a training checkpoint: wrapped and/or ``module.``-prefixed) or
    ``torchscript``. ``supported`` (format descriptions) is listed in the error for unknown files."""
    kind = sniff(path)
    if kind == "safetensors":
        return load_safetensors(path), "safetensors"
    if kind == "torchscript":
        if not trust_torchscript:
            raise CheckpointError(
                f"{path}: is a TorchScript archive (OpenAI's release format). Loading it runs "
                "torch.jit.load, which executes code stored in the file; pass trust_torchscript=True "
                "if you trust its source, or convert it to a plain state dict / safetensors first."
            )
        return load_torchscript_state(path), "torchscript"
    if kind in ("torch-zip", "pickle"):
        state, wrapped = unwrap_state_dict(torch_load_weights_only(path), path)
        return state, "torch-wrapped" if wrapped else "torch"
    listing = f"; supported: {'; '.join(supported)}" if supported else ""
    raise CheckpointError(f"{path}: unrecognised file format (not safetensors, not a PyTorch file){listing}")


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Weights of a Hugging Face model folder: single file or sharded (``*.index.json``)."""
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            state, _ = read_state_file(folder / name)
            return state
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid weight index ({e})") from e
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                shard_state, _ = read_state_file(folder / shard)
                state.update(shard_state)
            return state
    raise CheckpointError(f"{folder}: no {' / '.join(HF_WEIGHT_FILES)} (or a sharded index) in the folder")
