"""``samclip export onnx --model <name|folder> --out DIR [--size S] [--opset 17] [--decoder-precision int8]``:
deployment exports.

Writes ``image_encoder.onnx`` (backbone + SAM neck, the one backbone pass) and ``clip_head.onnx`` (the CLIP head
on its tokens), both also at the CLIP-head tasks' other sizes (``image_encoder_<S>.onnx``, ``clip_head_<S>.onnx``)
unless ``--no-clip-frames``, ``prompt_decoder.onnx``
(multimask) / ``prompt_decoder_single.onnx``, ``decoder_image_cache.onnx`` with the decoders that start from it
(``prompt_decoder_cached[_single].onnx``), the text tower and the ``samclip_onnx.json`` manifest; see
:mod:`samclip.export.onnx_export`. Run them with ``samclip.Predictor.from_onnx(DIR)`` or
:class:`samclip.export.OnnxBackend`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _cmd_export(args: argparse.Namespace) -> int:
    from .export.onnx_export import export_onnx

    t0 = time.perf_counter()
    out = export_onnx(args.model, Path(args.out), size=args.size, opset=args.opset, exporter=args.exporter,
                      decoder_precision=args.decoder_precision, clip_frames=args.clip_frames)
    manifest = json.loads((out / "samclip_onnx.json").read_text())
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    print(json.dumps({"out": str(out), "frame": manifest["frame"],
                      "extra_frames": sorted(map(int, manifest["extra_frames"])), "grid": manifest["grid"],
                      "opset": manifest["opset"],
                      "exporters": manifest["exporters"], "decoder_precision": manifest["decoder_precision"],
                      "bytes": files,
                      "seconds": round(time.perf_counter() - t0, 2)}, indent=2))
    return 0


def add_export_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export`` on the ``samclip`` command line."""
    p = subparsers.add_parser("export", help="export a merged model for deployment (ONNX)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=["onnx"], help="export format")
    p.add_argument("--model", default="tiny-synthetic", help="merged model name or folder (default: tiny-synthetic)")
    p.add_argument("--out", required=True,
                   help="output folder (an earlier export there is replaced atomically; a folder holding other files "
                        "is refused)")
    p.add_argument("--size", type=int, default=None, help="input frame in pixels (default: the model's native frame)")
    p.add_argument("--opset", type=int, default=17,
                   help="ONNX opset (default: 17; 14 up to the newest this torch writes)")
    p.add_argument("--exporter", choices=["auto", "torchscript", "dynamo"], default="auto",
                   help="torch.onnx exporter (auto: TorchScript-based, dynamo if that fails)")
    p.add_argument("--decoder-precision", choices=["fp32", "int8"], default="fp32",
                   help="int8: dynamically quantized prompt-decoder weights (smaller, faster decode; default fp32)")
    p.add_argument("--no-clip-frames", dest="clip_frames", action="store_false",
                   help="leave out the image graphs at the CLIP-head tasks' own sizes (classification at clip_size "
                        "and the TTA sizes...): a smaller export whose predictor reads every task from one frame")
    p.set_defaults(func=_cmd_export)
    return p
