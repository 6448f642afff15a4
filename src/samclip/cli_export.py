"""``samclip export FORMAT --model <source> --out <target>``: deployment exports.

- ``onnx`` (``--out DIR [--size S] [--opset 17] [--decoder-precision int8] [--no-clip-frames]``): every task's
  graphs. ``image_encoder.onnx`` (backbone + SAM neck, the one backbone pass) and ``clip_head.onnx`` (the CLIP
  head on its tokens), both also at the CLIP-head tasks' other sizes (``image_encoder_<S>.onnx``,
  ``clip_head_<S>.onnx``) unless ``--no-clip-frames``, ``prompt_decoder.onnx`` (multimask) /
  ``prompt_decoder_single.onnx``, ``decoder_image_cache.onnx`` with the decoders that start from it
  (``prompt_decoder_cached[_single].onnx``), the text tower and the ``samclip_onnx.json`` manifest; see
  :mod:`samclip.export.onnx_export`. Run them with ``samclip.Predictor.from_onnx(DIR)`` or
  :class:`samclip.export.OnnxBackend`.
- ``sam-onnx`` (``--out DIR [--return-single-mask] [--use-preprocess] [--decoder-precision int8] [--kind ...]``):
  the SAM side in segment-anything's own ONNX interface, ``sam_encoder.onnx`` (``input_image`` ->
  ``image_embeddings``) and ``sam_decoder.onnx`` (``image_embeddings``, ``point_coords``, ``point_labels``,
  ``mask_input``, ``has_mask_input``, ``orig_im_size`` -> ``masks``, ``iou_predictions``, ``low_res_masks``), so
  that tools built for SAM's ONNX files run a merged model's SAM head; see :mod:`samclip.export.sam_onnx`.
- ``sam-pth`` (``--out FILE.pth [--kind ...]``): the SAM side as a segment-anything checkpoint (a plain state dict
  with its keys), which ``segment_anything.sam_model_registry[...]`` and ``samclip.load_sam`` read; see
  :mod:`samclip.export.sam_checkpoint`.

``sam-onnx`` and ``sam-pth`` also take any SAM checkpoint samclip reads (``--kind sam``: segment-anything
``.pth``, Hugging Face folders, registered SAM names): a conversion between SAM formats.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

#: the options of each format beyond --model / --out; any other given is refused
FORMAT_OPTIONS = {
    "onnx": {"size", "opset", "exporter", "decoder_precision", "clip_frames"},
    "sam-onnx": {"kind", "opset", "exporter", "decoder_precision", "return_single_mask", "use_preprocess"},
    "sam-pth": {"kind"},
}
_FLAGS = {"size": "--size", "opset": "--opset", "exporter": "--exporter", "decoder_precision": "--decoder-precision",
          "clip_frames": "--no-clip-frames", "kind": "--kind", "return_single_mask": "--return-single-mask",
          "use_preprocess": "--use-preprocess"}


def _files(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}


def _cmd_export(args: argparse.Namespace) -> int:
    from .errors import UserError

    t0 = time.perf_counter()
    given = [_FLAGS[k] for k, default in args.option_defaults.items()
             if getattr(args, k) != default and k not in FORMAT_OPTIONS[args.format]]
    if given:
        raise UserError(f"{', '.join(given)}: not an option of the {args.format} export")
    report = {"sam-onnx": _export_sam_onnx, "sam-pth": _export_sam_pth, "onnx": _export_onnx}[args.format](args)
    print(json.dumps({**report, "seconds": round(time.perf_counter() - t0, 2)}, indent=2))
    return 0


def _export_onnx(args: argparse.Namespace) -> dict:
    from .export.onnx_export import export_onnx

    out = export_onnx(args.model, Path(args.out), size=args.size, opset=args.opset, exporter=args.exporter,
                      decoder_precision=args.decoder_precision, clip_frames=args.clip_frames)
    manifest = json.loads((out / "samclip_onnx.json").read_text())
    return {"out": str(out), "frame": manifest["frame"],
            "extra_frames": sorted(map(int, manifest["extra_frames"])), "grid": manifest["grid"],
            "opset": manifest["opset"], "exporters": manifest["exporters"],
            "decoder_precision": manifest["decoder_precision"], "bytes": _files(out)}


def _export_sam_onnx(args: argparse.Namespace) -> dict:
    from .export.sam_onnx import export_sam_onnx

    out = export_sam_onnx(args.model, Path(args.out), kind=args.kind, opset=args.opset,
                          return_single_mask=args.return_single_mask, use_preprocess=args.use_preprocess,
                          decoder_precision=args.decoder_precision, exporter=args.exporter)
    manifest = json.loads((out / "sam_onnx.json").read_text())
    return {"out": str(out), "model_type": manifest["model_type"], "frame": manifest["frame"],
            "masks": manifest["decoder"]["masks"], "use_preprocess": manifest["use_preprocess"],
            "opset": manifest["opset"], "decoder_precision": manifest["decoder_precision"], "bytes": _files(out)}


def _export_sam_pth(args: argparse.Namespace) -> dict:
    from .export.sam_checkpoint import export_sam_checkpoint

    out = export_sam_checkpoint(args.model, Path(args.out), kind=args.kind)
    return {"out": str(out), "format": "segment-anything", "bytes": out.stat().st_size}


def add_export_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export`` on the ``samclip`` command line."""
    p = subparsers.add_parser("export", help="export a merged model for deployment (ONNX, SAM formats)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=list(FORMAT_OPTIONS),
                   help="onnx: every task's graphs (samclip.Predictor.from_onnx); sam-onnx: the SAM side in "
                        "segment-anything's ONNX interface; sam-pth: the SAM side as a segment-anything checkpoint")
    p.add_argument("--model", default="tiny-synthetic",
                   help="merged model name or folder (default: tiny-synthetic); sam-onnx / sam-pth also take a SAM "
                        "checkpoint (see --kind)")
    p.add_argument("--out", required=True,
                   help="onnx / sam-onnx: output folder (an earlier export there is replaced atomically; a folder "
                        "holding other files is refused); sam-pth: the .pth file (written atomically)")
    p.add_argument("--size", type=int, default=None,
                   help="onnx: input frame in pixels (default: the model's native frame)")
    p.add_argument("--opset", type=int, default=17,
                   help="ONNX opset (default: 17; 14 up to the newest this torch writes)")
    p.add_argument("--exporter", choices=["auto", "torchscript", "dynamo"], default="auto",
                   help="torch.onnx exporter (auto: TorchScript-based, dynamo if that fails)")
    p.add_argument("--decoder-precision", choices=["fp32", "int8"], default="fp32",
                   help="int8: dynamically quantized prompt-decoder weights (smaller, faster decode; default fp32)")
    p.add_argument("--no-clip-frames", dest="clip_frames", action="store_false",
                   help="onnx: leave out the image graphs at the CLIP-head tasks' own sizes (classification at "
                        "clip_size and the TTA sizes...): a smaller export whose predictor reads every task from one "
                        "frame")
    p.add_argument("--kind", choices=["auto", "model", "sam"], default="auto",
                   help="sam-onnx / sam-pth: what --model is (auto: a merged model where it is one, else a SAM "
                        "checkpoint: segment-anything .pth, Hugging Face, our folder or a registered SAM name)")
    p.add_argument("--return-single-mask", action="store_true",
                   help="sam-onnx: one mask per prompt, chosen as segment-anything's export does (default: all 4 "
                        "mask outputs)")
    p.add_argument("--use-preprocess", action="store_true",
                   help="sam-onnx: the encoder takes the resized HxWx3 0-255 image and normalises / pads it itself "
                        "(default: a normalised, padded 1x3xSxS batch)")
    p.set_defaults(func=_cmd_export,
                   option_defaults={k: p.get_default(k) for k in set().union(*FORMAT_OPTIONS.values())})
    return p
