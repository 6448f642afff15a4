"""Registry of named weights: what a name means and where its files are.

Shipped names (``tiny-synthetic``) resolve to folders inside the package. Official names resolve to
their public release files or Hugging Face hub repositories, downloaded once into the cache folder
(``$SAMCLIP_CACHE`` or ``~/.cache/samclip``; see :mod:`samclip.hub`); a machine without network gets a
clear error that says which file to place where. Any hub repository also loads by its id,
``hf-hub:<org>/<name>[@revision]``, without being registered. Architectures live in
``samclip.models.presets``; an entry names the preset its weights were published for, which the loaders
use unless given another config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import hub

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class PretrainedEntry:
    """Where a named checkpoint comes from: a folder inside the package (``file``, no ``url`` / ``hf_repo``),
    a release file (``url``, cached as ``file``; ``sha256_prefix`` checked when known), or a hub repository
    (``hf_repo``, ``org/name[@revision]``)."""

    kind: str  # "sam" | "clip" | "samclip"
    file: str = ""
    url: str = ""
    sha256_prefix: str = ""
    preset: str = ""
    hf_repo: str = ""
    note: str = ""
    md5: str = ""  # the whole MD5 a release publishes (segment-anything's file names carry its first 6 digits)

    @property
    def source(self) -> str:
        if self.hf_repo:
            return hub.HUB_PREFIX + self.hf_repo
        return self.url or f"shipped: {self.file}"


_REGISTRY: dict[tuple[str, str], PretrainedEntry] = {
    ("sam", "tiny-synthetic"): PretrainedEntry("sam", "tiny-synthetic/sam", note="the embedded default's SAM teacher"),
    ("clip", "tiny-synthetic"): PretrainedEntry("clip", "tiny-synthetic/clip",
                                                note="the embedded default's CLIP teacher"),
    ("samclip", "tiny-synthetic"): PretrainedEntry("samclip", "tiny-synthetic/samclip",
                                                   note="the embedded default's merged model"),
    ("sam", "sam-vit-b"): PretrainedEntry(
        "sam", "sam_vit_b_01ec64.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth", "", "sam-vit-b",
        md5="01ec64d29a2fca3f0661936605ae66f8", note="segment-anything ViT-B",
    ),
    ("sam", "sam-vit-l"): PretrainedEntry(
        "sam", "sam_vit_l_0b3195.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth", "", "sam-vit-l",
        md5="0b3195507c641ddb6910d2bb5adee89c", note="segment-anything ViT-L",
    ),
    ("sam", "sam-vit-h"): PretrainedEntry(
        "sam", "sam_vit_h_4b8939.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth", "", "sam-vit-h",
        md5="4b8939a88964f0f4ff5f5b2642c598a6", note="segment-anything ViT-H",
    ),
    # OpenAI's CLIP weights as open_clip publishes them on the hub (safetensors: no TorchScript to trust);
    # the preset fixes QuickGELU, which a state dict cannot tell from GELU
    ("clip", "clip-vit-b-32"): PretrainedEntry(
        "clip", preset="clip-vit-b-32", hf_repo="timm/vit_base_patch32_clip_224.openai", note="OpenAI ViT-B/32"),
    ("clip", "clip-vit-b-16"): PretrainedEntry(
        "clip", preset="clip-vit-b-16", hf_repo="timm/vit_base_patch16_clip_224.openai", note="OpenAI ViT-B/16"),
    ("clip", "clip-vit-l-14"): PretrainedEntry(
        "clip", preset="clip-vit-l-14", hf_repo="timm/vit_large_patch14_clip_224.openai", note="OpenAI ViT-L/14"),
    ("clip", "clip-rn50"): PretrainedEntry(
        "clip", preset="clip-rn50", hf_repo="timm/resnet50_clip.openai", note="OpenAI RN50"),
    ("clip", "clip-rn101"): PretrainedEntry(
        "clip", preset="clip-rn101", hf_repo="timm/resnet101_clip.openai", note="OpenAI RN101"),
    # the SAM-CLIP paper's CLIP teacher: OpenCLIP ViT-L/14 trained on DataComp-1B (GELU, read from the
    # repository's open_clip_config.json)
    ("clip", "clip-vit-l-14-datacomp"): PretrainedEntry(
        "clip", hf_repo="laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K", note="OpenCLIP ViT-L/14, DataComp-1B"),
}


def list_pretrained(kind: str | None = None) -> list[str]:
    """Names of registered weights, optionally for one kind (``sam``, ``clip``, ``samclip``)."""
    return sorted({name for (k, name) in _REGISTRY if kind is None or k == kind})


def registry() -> dict[tuple[str, str], PretrainedEntry]:
    """Every registered (kind, name) with its entry (a copy)."""
    return dict(_REGISTRY)


def is_registered(kind: str, name: str) -> bool:
    return (kind, name) in _REGISTRY


def is_available(kind: str, source: str) -> bool:
    """Whether a registered name or hub id can be loaded from this machine without a download."""
    if hub.is_hub_id(source):
        return hub.is_complete(hub.repo_folder(cache_dir(), *hub.parse_hub_id(source)))
    entry = _REGISTRY[(kind, source)]
    if entry.hf_repo:
        return is_available(kind, entry.source)
    return (cache_dir() / entry.file if entry.url else WEIGHTS_DIR / entry.file).exists()


def preset_for(kind: str, name: str) -> str | None:
    """The preset a registered name's weights were published for, or None (then read from the files)."""
    entry = _REGISTRY.get((kind, name))
    return entry.preset or None if entry else None


def cache_dir() -> Path:
    """``$SAMCLIP_CACHE`` (empty: unset) or ``~/.cache/samclip``; ValueError naming the variable where it is a
    file."""
    value = os.environ.get("SAMCLIP_CACHE", "").strip()
    path = Path(value) if value else Path.home() / ".cache" / "samclip"
    if path.exists() and not path.is_dir():
        raise ValueError(f"SAMCLIP_CACHE={str(path)!r} is a file; it names the folder the downloads are cached in")
    return path


def resolve(kind: str, name: str, download: bool = True, force: bool = False) -> Path:
    """Local path of a registered name or a hub id, downloading official files into the cache if needed
    (``force``: again, even when cached)."""
    if hub.is_hub_id(name):
        folder = hub.repo_folder(cache_dir(), *hub.parse_hub_id(name))
        if not download and not hub.is_complete(folder):
            raise FileNotFoundError(f"{name!r} is not in the cache ({folder})")
        return hub.fetch(kind, name, cache_dir(), force=force)
    entry = _REGISTRY.get((kind, name))
    if entry is None:
        known = ", ".join(list_pretrained(kind))
        raise KeyError(f"no registered {kind} weights named {name!r}; known: {known}")
    if entry.hf_repo:
        return resolve(kind, entry.source, download, force)
    if not entry.url:
        path = WEIGHTS_DIR / entry.file
        if not path.exists():
            raise FileNotFoundError(f"shipped weights {name!r} are missing from the package ({path})")
        return path
    path = cache_dir() / entry.file
    if path.exists() and not force:
        return path
    if not download or hub.offline():
        raise FileNotFoundError(f"{name!r} is not in the cache; place {entry.file} at {path}")
    with hub.locked(path):
        if path.exists() and not force:  # another process fetched it while this one waited
            return path
        return hub.download_url(entry.url, path, sha256_prefix=entry.sha256_prefix, md5=entry.md5)
