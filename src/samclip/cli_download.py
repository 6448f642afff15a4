"""``samclip download NAME [--kind sam|clip|model] [--force]`` and ``samclip download --list``: fetch official
weights into the cache ahead of time.

NAME is a registered name (``sam-vit-b``, ``clip-vit-l-14``, ``clip-vit-l-14-datacomp`` ...) or a Hugging Face
hub id (``hf-hub:facebook/sam-vit-base``, ``hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K@main``; these need
``--kind``). The local path is printed on stdout, so a cluster job can fetch on a login node and run offline
(``HF_HUB_OFFLINE=1``) on the compute nodes. The cache is ``$SAMCLIP_CACHE`` (default ``~/.cache/samclip``);
``HF_ENDPOINT`` selects a hub mirror and ``HF_TOKEN`` opens gated repositories. ``--list`` prints every
registered name, its source and whether it is already here.
"""

from __future__ import annotations

import argparse

from .errors import UserError

KINDS = {"sam": "sam", "clip": "clip", "model": "samclip"}


def _kind_of(name: str, given: str | None) -> str:
    from . import hub, pretrained

    if given:
        return KINDS[given]
    if hub.is_hub_id(name):
        raise UserError(f"{name}: say what it holds with --kind sam|clip|model")
    kinds = sorted(k for (k, n) in pretrained.registry() if n == name)
    if not kinds:
        known = ", ".join(pretrained.list_pretrained())
        raise UserError(f"{name!r} is neither a registered name ({known}) nor a hub id (hf-hub:<org>/<name>)")
    if len(kinds) > 1:
        flags = "|".join(k for k, v in KINDS.items() if v in kinds)
        raise UserError(f"{name!r} names weights of several kinds; say which with --kind {flags}")
    return kinds[0]


def _cmd_download(args: argparse.Namespace) -> int:
    from . import pretrained

    if args.list:
        rows = [(kind, name, "cached" if pretrained.is_available(kind, name) else "-", entry.source, entry.note)
                for (kind, name), entry in sorted(pretrained.registry().items())]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + ("  " + row[4] if row[4] else ""))
        print(f"cache: {pretrained.cache_dir()}")
        return 0
    if not args.name:
        raise UserError("name the weights to fetch (or --list)")
    kind = _kind_of(args.name, args.kind)
    print(pretrained.resolve(kind, args.name, force=args.force))
    return 0


def add_download_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``download`` on the ``samclip`` command line."""
    p = subparsers.add_parser("download", help="fetch official weights (registered names, hf-hub:...) into the cache",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="registered name or hf-hub:<org>/<name>[@revision]")
    p.add_argument("--kind", choices=sorted(KINDS), help="what the weights are (needed for hub ids)")
    p.add_argument("--force", action="store_true",
                   help="ask the hub again even if cached (a moved branch) and fetch what changed")
    p.add_argument("--list", action="store_true", help="list registered names, their sources and the cache state")
    p.set_defaults(func=_cmd_download)
    return p
