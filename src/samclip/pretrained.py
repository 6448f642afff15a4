"""Registry of named weights: what a name means and where its files are.

Shipped names (``tiny-synthetic``) resolve to folders inside the package. Official names resolve to
their public release files, downloaded once into the cache folder (``$SAMCLIP_CACHE`` or
``~/.cache/samclip``); a machine without network gets a clear error that says which file to place
where. Architectures live in ``samclip.models.presets``; this module only knows about weights.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class PretrainedEntry:
    """Where a named checkpoint comes from. ``file`` is inside the package when ``url`` is empty."""

    kind: str  # "sam" | "clip" | "samclip"
    file: str
    url: str = ""
    sha256_prefix: str = ""
    preset: str = ""


_REGISTRY: dict[tuple[str, str], PretrainedEntry] = {
    ("sam", "tiny-synthetic"): PretrainedEntry("sam", "tiny-synthetic/sam"),
    ("clip", "tiny-synthetic"): PretrainedEntry("clip", "tiny-synthetic/clip"),
    ("samclip", "tiny-synthetic"): PretrainedEntry("samclip", "tiny-synthetic/samclip"),
    ("sam", "sam-vit-b"): PretrainedEntry(
        "sam", "sam_vit_b_01ec64.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth", "", "sam-vit-b",
    ),
    ("sam", "sam-vit-l"): PretrainedEntry(
        "sam", "sam_vit_l_0b3195.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth", "", "sam-vit-l",
    ),
    ("sam", "sam-vit-h"): PretrainedEntry(
        "sam", "sam_vit_h_4b8939.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth", "", "sam-vit-h",
    ),
}


def list_pretrained(kind: str | None = None) -> list[str]:
    """Names of registered weights, optionally for one kind (``sam``, ``clip``, ``samclip``)."""
    return sorted({name for (k, name) in _REGISTRY if kind is None or k == kind})


def is_registered(kind: str, name: str) -> bool:
    return (kind, name) in _REGISTRY


def cache_dir() -> Path:
    return Path(os.environ.get("SAMCLIP_CACHE", Path.home() / ".cache" / "samclip"))


def resolve(kind: str, name: str, download: bool = True) -> Path:
    """Local path of the named weights, downloading official files into the cache if needed."""
    entry = _REGISTRY.get((kind, name))
    if entry is None:
        known = ", ".join(list_pretrained(kind))
        raise KeyError(f"no registered {kind} weights named {name!r}; known: {known}")
    if not entry.url:
        path = WEIGHTS_DIR / entry.file
        if not path.exists():
            raise FileNotFoundError(f"shipped weights {name!r} are missing from the package ({path})")
        return path
    path = cache_dir() / entry.file
    if path.exists():
        return path
    if not download:
        raise FileNotFoundError(f"{name!r} is not in the cache; place {entry.file} at {path}")
    return _download(entry, path)


def _download(entry: PretrainedEntry, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    try:
        with urllib.request.urlopen(entry.url, timeout=60) as r, open(tmp, "wb") as f:  # noqa: S310
            digest = hashlib.sha256()
            while chunk := r.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"could not download {entry.url} ({e}); offline? fetch it elsewhere, put it at {path}"
        ) from e
    if entry.sha256_prefix and not digest.hexdigest().startswith(entry.sha256_prefix):
        tmp.unlink(missing_ok=True)
        raise ValueError(f"checksum mismatch for {entry.url}")
    os.replace(tmp, path)
    return path
