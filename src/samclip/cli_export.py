"""``samclip export onnx --model <name|folder> --out DIR [--size S] [--opset 17] [--decoder-precision int8]``:
deployment exports. ``samclip export segment-anything --model <source> --out DIR [--return-single-mask]
[--use-preprocess] [--kind auto|model|sam]``: the SAM side in segment-anything's own ONNX interface.

Writes ``image_encoder.onnx`` (backbone + SAM neck, the one backbone pass) and ``clip_head.onnx`` (the CLIP head
on its tokens), both also at the CLIP-head tasks' other sizes (``image_encoder_<S>.onnx``, ``clip_head_<S>.onnx``)
unless ``--no-clip-frames``, ``prompt_decoder.onnx``
(multimask) / ``prompt_decoder_single.onnx``, ``decoder_image_cache.onnx`` with the decoders that start from it
(``prompt_decoder_cached[_single].onnx``), the text tower and the ``samclip_onnx.json`` manifest; see
:mod:`samclip.export.onnx_export`. Run them with ``samclip.Predictor.from_onnx(DIR)`` or
:class:`samclip.export.OnnxBackend`.

``segment-anything`` writes ``sam_encoder.onnx`` and ``sam_decoder.onnx`` with the tensor names and conventions of
segment-anything's export scripts (``input_image`` -> ``image_embeddings``; ``image_embeddings``, ``point_coords``,
``point_labels``, ``mask_input``, ``has_mask_input``, ``orig_im_size`` -> ``masks``, ``iou_predictions``,
``low_res_masks``), so that tools built for SAM's ONNX files run a merged model's SAM head, or any SAM checkpoint
``samclip`` reads; see :mod:`samclip.export.sam_onnx`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _cmd_export(args: argparse.Namespace) -> int:
    from .errors import UserError
    from .export.onnx_export import export_onnx

    t0 = time.perf_counter()
    sam_only = {"--return-single-mask": args.return_single_mask, "--use-preprocess": args.use_preprocess,
                "--kind": args.kind != "auto"}
    onnx_only = {"--size": args.size is not None, "--no-clip-frames": not args.clip_frames}
    unused = [flag for flag, given in (onnx_only if args.format == "segment-anything" else sam_only).items() if given]
    if unused:
        raise UserError(f"{', '.join(unused)}: not an option of the {args.format} export")
    if args.format == "segment-anything":
        return _export_segment_anything(args, t0)
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


def _export_segment_anything(args: argparse.Namespace, t0: float) -> int:
    from .export.sam_onnx import export_segment_anything

    out = export_segment_anything(args.model, Path(args.out), kind=args.kind, opset=args.opset,
                                  return_single_mask=args.return_single_mask, use_preprocess=args.use_preprocess,
                                  decoder_precision=args.decoder_precision, exporter=args.exporter)
    manifest = json.loads((out / "sam_onnx.json").read_text())
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    print(json.dumps({"out": str(out), "model_type": manifest["model_type"], "frame": manifest["frame"],
                      "masks": manifest["decoder"]["masks"], "use_preprocess": manifest["use_preprocess"],
                      "opset": manifest["opset"], "decoder_precision": manifest["decoder_precision"],
                      "bytes": files, "seconds": round(time.perf_counter() - t0, 2)}, indent=2))
    return 0


def add_export_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export`` on the ``samclip`` command line."""
    p = subparsers.add_parser("export", help="export a merged model for deployment (ONNX)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=["onnx", "segment-anything"],
                   help="onnx: every task's graphs (samclip.Predictor.from_onnx); segment-anything: the SAM side in "
                        "segment-anything's ONNX interface (sam_encoder.onnx, sam_decoder.onnx)")
    p.add_argument("--model", default="tiny-synthetic",
                   help="merged model name or folder (default: tiny-synthetic); segment-anything also takes a SAM "
                        "checkpoint (see --kind)")
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
    p.add_argument("--kind", choices=["auto", "model", "sam"], default="auto",
                   help="segment-anything: what --model is (auto: a merged model where it is one, else a SAM "
                        "checkpoint: segment-anything .pth, Hugging Face, our folder or a registered SAM name)")
    p.add_argument("--return-single-mask", action="store_true",
                   help="segment-anything: one mask per prompt, chosen as segment-anything's export does (default: "
                        "all 4 mask outputs)")
    p.add_argument("--use-preprocess", action="store_true",
                   help="segment-anything: the encoder takes the resized HxWx3 0-255 image and normalises / pads it "
                        "itself (default: a normalised, padded 1x3xSxS batch)")
    p.set_defaults(func=_cmd_export)
    return p
