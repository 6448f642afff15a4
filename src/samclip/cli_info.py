"""``samclip info NAME|PATH [--kind sam|clip|model]``: what a checkpoint holds, as JSON, without building the model.
(An ONNX export folder, of ``samclip export onnx`` or ``sam-onnx``, is described from its manifest.)

The architecture (and the preset it matches, if any), the format it was read from, the parameter count, and for
merged models the sizes each task reads, the test-time views and the prompt templates. Any name, folder, file or
hub id the loaders take (``samclip.load_sam`` / ``load_clip`` / ``load_model``); a name or file that fits several
kinds is tried as a merged model, then SAM, then CLIP, unless ``--kind`` says which.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .cli_download import KINDS
from .errors import UserError


def _preset_name(cfg: Any, presets: dict[str, Any]) -> str | None:
    return next((name for name, p in presets.items() if p == cfg), None)


def _count(state: dict) -> int:
    return int(sum(t.numel() for t in state.values()))


def describe_sam(cfg: Any) -> dict[str, Any]:
    from .models import SAM_PRESETS

    enc = cfg.image_encoder
    return {"preset": _preset_name(cfg, SAM_PRESETS), "img_size": enc.img_size, "patch_size": enc.patch_size,
            "grid": enc.img_size // enc.patch_size, "embed_dim": enc.embed_dim, "depth": enc.depth,
            "global_attn_indexes": list(enc.global_attn_indexes), "embedding_channels": enc.out_chans}


def describe_clip(cfg: Any, tokenizer: Any) -> dict[str, Any]:
    from .models import CLIP_PRESETS

    v, t = cfg.vision, cfg.text
    return {"preset": _preset_name(cfg, CLIP_PRESETS), "embed_dim": cfg.embed_dim,
            "vision": {"image_size": v.image_size, "width": v.width, "layers": v.layers, "act": v.act,
                       "tower": "resnet" if v.is_resnet else f"vit, patch {v.patch_size}"},
            "text": {"context_length": t.context_length, "width": t.width, "layers": t.layers, "act": t.act,
                     "vocab_size": t.vocab_size},
            "tokenizer": None if tokenizer is None else {"vocab_size": tokenizer.vocab_size}}


def describe(kind: str, source: str) -> dict[str, Any]:
    """The JSON summary of ``source`` read as ``kind`` (``sam``, ``clip``, ``samclip``)."""
    from .factory import _resolve, read_tokenizer

    path = _resolve(kind, source)
    out: dict[str, Any] = {"source": source, "path": str(path), "kind": kind}
    if kind == "samclip":
        from .checkpoint import CheckpointError, load_folder
        from .models import SamClipConfig

        model_type, cfg_dict, state = load_folder(path)
        if model_type != "samclip":
            raise CheckpointError(f"{path} holds a {model_type!r} model, not a merged samclip model")
        cfg = SamClipConfig.from_dict(cfg_dict)
        tok = read_tokenizer(path, cfg.text.context_length)
        out.update(format="samclip", parameters=_count(state), sam=describe_sam(cfg.sam),
                   clip_head={"depth": cfg.head.depth, "mlp_hidden": cfg.head.mlp_hidden, "out_dim": cfg.head.out_dim},
                   clip_size=cfg.clip_size, label_size=cfg.label_size or cfg.clip_size, semseg_size=cfg.semseg_size,
                   classify_views=[list(v) for v in cfg.classify_views()], templates=list(cfg.templates) or None,
                   tokenizer=None if tok is None else {"vocab_size": tok.vocab_size})
    elif kind == "sam":
        from .convert import load_sam_checkpoint

        cfg, state, fmt = load_sam_checkpoint(path)
        out.update(format=fmt, parameters=_count(state), **describe_sam(cfg))
    else:
        from .convert import load_clip_checkpoint

        cfg, state, tok, fmt = load_clip_checkpoint(path)
        out.update(format=fmt, parameters=_count(state), **describe_clip(cfg, tok))
    return out


def describe_export(folder: Path) -> dict[str, Any] | None:
    """The JSON summary of an ONNX export folder (``samclip export onnx`` / ``sam-onnx``), None for any other
    path. Reads the manifest only; ValueError / OSError where it is not what the export wrote."""
    from .export.onnx_export import MANIFEST_NAME, SAM_MANIFEST_NAME

    if not folder.is_dir():
        return None
    graphs = {p.name: p.stat().st_size for p in sorted(folder.glob("*.onnx"))}
    if (folder / MANIFEST_NAME).is_file():
        from .export import read_manifest

        m = read_manifest(folder)
        return {"source": str(folder), "kind": "onnx export", "format": f"{m['format']} v{m['format_version']}",
                "run_with": "samclip.Predictor.from_onnx(folder) / samclip serve --onnx folder",
                "frame": m["frame"], "grid": m["grid"], "frames": sorted(int(f) for f in m.get("graphs", {})) or None,
                "decoder_precision": m.get("decoder_precision", "fp32"), "opset": m.get("opset"),
                "text_encoder": m.get("text") is not None, "source_model": m.get("source"), "bytes": graphs}
    if (folder / SAM_MANIFEST_NAME).is_file():
        from .export.sam_onnx import read_sam_manifest

        m = read_sam_manifest(folder)
        return {"source": str(folder), "kind": "onnx export", "format": m["format"],
                "run_with": "tools built for segment-anything's ONNX files", "model_type": m["model_type"],
                "frame": m["frame"], "grid": m["grid"], "masks": m["decoder"]["masks"],
                "use_preprocess": m["use_preprocess"], "decoder_precision": m["decoder_precision"],
                "opset": m["opset"], "source_model": m.get("source"), "encoder": m["encoder"],
                "decoder": m["decoder"], "bytes": graphs}
    return None


def _cmd_info(args: argparse.Namespace) -> int:
    from . import hub
    from .checkpoint import CheckpointError

    export = None if args.kind else describe_export(Path(args.source))
    if export is not None:
        print(json.dumps(export, indent=2))
        return 0
    if args.kind:
        kinds = [KINDS[args.kind]]
    elif hub.is_hub_id(args.source):
        raise UserError(f"{args.source}: say what it holds with --kind sam|clip|model")
    else:
        from . import pretrained

        kinds = ["samclip", "sam", "clip"]
        # a registered name is read as the kind(s) it is registered for (tiny-synthetic names all three)
        kinds = [k for k in kinds if pretrained.is_registered(k, args.source)] or kinds
    errors = []
    for kind in kinds:
        try:
            print(json.dumps(describe(kind, args.source), indent=2))
            return 0
        except (CheckpointError, KeyError) as e:  # another kind of checkpoint, or a name of another kind
            errors.append(f"as {kind}: {e.args[0] if isinstance(e, KeyError) and e.args else e}")
    raise UserError(f"{args.source}: not a checkpoint samclip can read ({'; '.join(errors)})")


def add_info_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``info`` on the ``samclip`` command line."""
    p = subparsers.add_parser("info", help="what a checkpoint or ONNX export holds (architecture, format, parameters), "
                                           "as JSON",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a registered name, folder, checkpoint file or hf-hub:<org>/<name>")
    p.add_argument("--kind", choices=sorted(KINDS), help="read it as this kind (needed for hub ids)")
    p.set_defaults(func=_cmd_info)
    return p
