"""Our self-describing checkpoint format: a folder with ``model.safetensors`` + ``config.json``.

``config.json`` holds ``{"format": "samclip", "format_version": 1, "model_type": ..., "config": {...}}``
so a folder can be rebuilt without knowing its preset. Writes are atomic: every file is written to a
temporary name in the same folder and renamed into place, so a reader never sees half a checkpoint.
Extra files (a tokenizer, a run config) can be written alongside with :func:`atomic_write_bytes`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "samclip"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model; the message says why."""


def ordinary_mode(bits: int = 0o666) -> int:
    """``bits`` less the process umask: the permissions a new file (0o666) or folder (0o777) gets; for files made
    private by ``tempfile`` before they are renamed into place."""
    umask = os.umask(0)
    os.umask(umask)
    return bits & ~umask


def temporary_folder(target: Path) -> Path:
    """A new empty folder beside ``target`` (hidden name, ordinary permissions) to write into before
    :func:`replace_folder` renames it to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(ordinary_mode(0o777))  # mkdtemp makes it private
    return tmp


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder to write the file to; when the block ends without an error the
    file gets the permissions of an ordinary new file (0666 less the umask; the temporary file was private) and
    replaces ``path`` by ``os.replace``, when it raises the temporary file is deleted: ``path`` is at every moment
    absent, the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, ordinary_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_file`), synced to disk before the rename."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` of ``tensors`` (made contiguous, on the CPU) to ``path`` atomically
    (:func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


#: what a model folder holds: a folder with nothing else is replaced as a whole when a model is saved over it
MODEL_FOLDER_FILES = frozenset({WEIGHTS_NAME, CONFIG_NAME, "tokenizer.json", "training.json"})


def save_folder(folder: str | os.PathLike, model_type: str, config: dict[str, Any],
                state_dict: dict[str, torch.Tensor], extra_files: dict[str, bytes] | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``extra_files`` (name -> bytes, e.g. the tokenizer) as
    one folder: they are written into a temporary folder beside ``folder``, which then takes its place, so a
    kill at any moment leaves either the old model or the new one, never new weights beside an old config. A
    folder holding other files than a model's (:data:`MODEL_FOLDER_FILES`) is not replaced: the files are
    written into it one by one, each atomically, the config last (its presence marks completion)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_type": model_type, "config": config}
    files = {**(extra_files or {}), CONFIG_NAME: (json.dumps(meta, indent=2) + "\n").encode()}
    # tied / shared tensors must be stored once per name for safetensors
    tensors = {k: v.clone() for k, v in state_dict.items()}
    if folder.is_dir() and any(p.name not in MODEL_FOLDER_FILES for p in folder.iterdir()):
        atomic_save_safetensors(tensors, folder / WEIGHTS_NAME, metadata={"format": "pt"})
        for name, data in files.items():  # the config last
            atomic_write_bytes(folder / name, data)
        return folder
    tmp = temporary_folder(folder)
    try:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / WEIGHTS_NAME).chmod(ordinary_mode())  # safetensors writes it private
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def replace_folder(new: Path, folder: Path) -> None:
    """Rename the finished folder ``new`` to ``folder`` (same parent); an existing ``folder`` is first renamed
    aside to a hidden name, then deleted, so ``folder`` is at every moment absent, the old one or the new one."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent)) / "x"
        os.replace(folder, old)
    os.replace(new, folder)
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of one of our folders, validated."""
    if Path(folder).is_file():
        raise CheckpointError(f"{folder} is a file; expected a model folder (config.json + {WEIGHTS_NAME}) or a "
                              "registered name")
    path = Path(folder) / CONFIG_NAME
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{folder}: no {CONFIG_NAME}; not a samclip checkpoint folder") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a samclip config (missing \"format\": \"{FORMAT}\")")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta['format_version']} is newer than this samclip")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("model_type"), str):
        raise CheckpointError(f"{path}: needs a \"model_type\" string and a \"config\" object")
    return meta


def is_samclip_folder(path: str | os.PathLike) -> bool:
    p = Path(path)
    if not (p.is_dir() and (p / CONFIG_NAME).is_file()):
        return False
    try:
        return json.loads((p / CONFIG_NAME).read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, OSError, AttributeError):
        return False


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file with a readable error for truncated or corrupt files."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def load_folder(folder: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """Read one of our folders -> (model_type, config dict, state dict)."""
    meta = read_config(folder)
    weights = Path(folder) / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{folder}: {WEIGHTS_NAME} is missing")
    return meta["model_type"], meta["config"], load_safetensors(weights)


def describe_mismatch(missing: list[str], unexpected: list[str], shape_errors: list[str], what: str,
                      limit: int = 5) -> str:
    """One readable sentence about a state dict that does not fit, naming the first few keys only."""

    def few(keys: list[str]) -> str:
        head = ", ".join(keys[:limit])
        return head + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
    if shape_errors:
        parts.append(f"{len(shape_errors)} shape mismatches: {few(shape_errors)}")
    return f"checkpoint does not fit {what}: " + "; ".join(parts)


def load_state_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with one readable :class:`CheckpointError` instead of a key dump."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shape_errors = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if own[k].shape != state_dict[k].shape
    ]
    if missing or unexpected or shape_errors:
        raise CheckpointError(describe_mismatch(missing, unexpected, shape_errors, what))
    module.load_state_dict(state_dict, strict=True)
