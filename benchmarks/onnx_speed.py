"""ONNX Runtime vs PyTorch (fp32 and bf16 autocast) CPU latency of the exported graphs, side by side.

Two workloads, each the median of ``--reps`` runs after one warm-up:

- ``image_encoder``: backbone + SAM neck + CLIP head (per-patch and pooled), one 1x3xSxS image: the two
  image-side graphs (PyTorch runs the same export wrapper modules that were exported); ``backbone_only``: the
  first graph alone, what ``Predictor.set_image`` runs;
- ``prompt_decode``: one prompt (a foreground point, multimask output) on cached image embeddings
  (PyTorch: ``model.decode``; ONNX: the ``prompt_decoder.onnx`` graph through :class:`OnnxBackend`, in fp32
  and as the int8 export of ``samclip export onnx --decoder-precision int8``, with its mask agreement); and both
  with the image's first-layer projections computed once beforehand (``image_cache``: what the predictors run;
  ONNX: ``prompt_decoder_cached.onnx``).

Model: ``--model`` (a merged-model name or folder; default ``tiny-synthetic``) when it exists, otherwise
(or with ``--preset``) a randomly initialised merged model of a preset shape: ``vit-b`` = sam-vit-b
backbone / SAM head + a CLIP head into clip-vit-b-16's 512-d text space (1024 px, grid 64); ``tiny`` =
sam-tiny + clip-tiny (128 px). Speed does not depend on the weight values. Prints JSON.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_speed.py --preset vit-b --reps 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _timing import median_seconds
from samclip.allocator import tune_malloc


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    from samclip.models import ClipHeadConfig, SamClip, SamClipConfig, clip_preset, sam_preset

    if args.preset is None:
        try:
            from samclip import load_model

            return load_model(args.model), args.model
        except (FileNotFoundError, KeyError) as err:
            print(json.dumps({"note": f"--model {args.model} unavailable ({err}); using --preset vit-b"}), flush=True)
            args.preset = "vit-b"
    if args.preset == "vit-b":
        cfg = SamClipConfig(sam=sam_preset("sam-vit-b"), text=clip_preset("clip-vit-b-16").text,
                            head=ClipHeadConfig(out_dim=clip_preset("clip-vit-b-16").embed_dim))
    else:
        cfg = SamClipConfig(sam=sam_preset("sam-tiny"), text=clip_preset("clip-tiny").text,
                            head=ClipHeadConfig(mlp_hidden=16, out_dim=clip_preset("clip-tiny").embed_dim))
    torch.manual_seed(0)
    return SamClip.from_config(cfg).eval(), f"random merged model, preset {args.preset}"


def main() -> None:
    tune_malloc()  # both sides of every comparison run with the same allocator (samclip.allocator)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-synthetic", help="merged model name or folder")
    ap.add_argument("--preset", choices=["vit-b", "tiny"], default=None, help="random merged model of this shape")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per measurement (median)")
    ap.add_argument("--decode-reps", type=int, default=20, help="timed runs per prompt-decode measurement")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and onnxruntime threads")
    ap.add_argument("--out", default=None, help="export folder (default: a temporary folder)")
    ap.add_argument("--skip-bf16", action="store_true", help="skip the PyTorch bf16-autocast timings")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import onnxruntime

    from samclip.export import OnnxBackend, export_onnx
    from samclip.export.onnx_export import DECODER_NAMES, ClipHeadGraph, ImageEncoderGraph

    model, described = build_model(args)
    frame = model.img_size
    grid = frame // model.sam.config.image_encoder.patch_size
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "export")
        t0 = time.perf_counter()
        export_onnx(model, out, clip_frames=False)  # the main frame is what is timed
        export_s = time.perf_counter() - t0
        sizes = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(out.glob("*.onnx"))}
        backend = OnnxBackend(out, threads=args.threads)
        out8 = export_onnx(model, Path(tmp) / "export_int8", decoder_precision="int8", clip_frames=False)
        sizes["prompt_decoder.onnx (int8)"] = round((out8 / DECODER_NAMES[True]).stat().st_size / 2**20, 1)
        backend8 = OnnxBackend(out8, threads=args.threads)

        pixels = torch.randn(1, 3, frame, frame, generator=torch.Generator().manual_seed(0))
        valid = torch.tensor([grid, grid])
        graph, head = ImageEncoderGraph(model).eval(), ClipHeadGraph(model).eval()
        px = pixels.numpy()

        def torch_both(x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # what backend.encode runs: both graphs
            emb, tokens = graph(x)
            return (emb, *head(tokens, valid))

        def torch_encode(bf16: bool, backbone_only: bool = False):  # noqa: ANN202
            def run() -> None:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    graph(pixels) if backbone_only else torch_both(pixels)
            return run

        with torch.inference_mode():
            ref = [t.numpy() for t in torch_both(pixels)]
        got = backend.encode(px, (grid, grid))
        enc_diff = {name: float(np.abs(a - b).max())
                    for name, a, b in zip(("image_embeddings", "patch_embeddings", "image_embedding_clip"), got, ref)}
        emb_t = torch.from_numpy(got[0])
        pc, pl = [[[frame * 0.4, frame * 0.3]]], [[1]]
        pc_t, pl_t = torch.tensor(pc), torch.tensor(pl)

        with torch.inference_mode():
            torch_cache = model.decoder_image_cache(emb_t)
        onnx_cache = backend.image_cache(got[0])

        def torch_decode(bf16: bool, cached: bool = False):  # noqa: ANN202
            def run() -> None:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    model.decode(emb_t, pc_t, pl_t, None, None, True, image_cache=torch_cache if cached else None)
            return run

        with torch.inference_mode():
            ref_low, ref_iou = model.decode(emb_t, pc_t, pl_t, None, None, True)
        low, iou = backend.decode(got[0], pc, pl)
        low_c, _ = backend.decode(got[0], pc, pl, image_cache=onnx_cache)
        dec_diff = {"low_res_masks": float(np.abs(low - ref_low.numpy()).max()),
                    "iou_predictions": float(np.abs(iou - ref_iou.numpy()).max()),
                    "low_res_masks_image_cache": float(np.abs(low_c - ref_low.numpy()).max())}
        low8, iou8 = backend8.decode(got[0], pc, pl)
        a, b = low8 > 0, ref_low.numpy() > 0
        int8_vs_torch = {"low_res_masks_max_abs_diff": float(np.abs(low8 - ref_low.numpy()).max()),
                         "iou_predictions_max_abs_diff": float(np.abs(iou8 - ref_iou.numpy()).max()),
                         "mask_iou": float((a & b).sum() / max(1, (a | b).sum()))}

        result = {
            "benchmark": "onnx_speed", "model": described, "frame": frame, "grid": grid,
            "threads": args.threads, "reps": args.reps, "decode_reps": args.decode_reps,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "cpu": cpu_name(),
            "export_seconds": round(export_s, 2), "onnx_mb": sizes,
            "max_abs_diff_onnx_vs_torch_fp32": {**enc_diff, **dec_diff},
            "int8_decoder_vs_torch_fp32": int8_vs_torch,
            "image_encoder_ms": {
                "onnxruntime_fp32": 1e3 * median_seconds(lambda: backend.encode(px, (grid, grid)), args.reps),
                "torch_fp32": 1e3 * median_seconds(torch_encode(False), args.reps),
            },
            "backbone_only_ms": {  # what set_image runs (the CLIP head waits for a CLIP task)
                "onnxruntime_fp32": 1e3 * median_seconds(lambda: backend.encode_image(px), args.reps),
                "torch_fp32": 1e3 * median_seconds(torch_encode(False, backbone_only=True), args.reps),
            },
            "prompt_decode_ms": {
                "onnxruntime_fp32": 1e3 * median_seconds(lambda: backend.decode(got[0], pc, pl), args.decode_reps),
                "onnxruntime_int8": 1e3 * median_seconds(lambda: backend8.decode(got[0], pc, pl), args.decode_reps),
                "torch_fp32": 1e3 * median_seconds(torch_decode(False), args.decode_reps),
                # both with the image's first-layer projections computed once (what the predictors run)
                "onnxruntime_fp32_image_cache": 1e3 * median_seconds(
                    lambda: backend.decode(got[0], pc, pl, image_cache=onnx_cache), args.decode_reps),
                "torch_fp32_image_cache": 1e3 * median_seconds(torch_decode(False, cached=True), args.decode_reps),
            },
        }
        if not args.skip_bf16:
            result["image_encoder_ms"]["torch_bf16_autocast"] = 1e3 * median_seconds(torch_encode(True), args.reps)
            result["prompt_decode_ms"]["torch_bf16_autocast"] = 1e3 * median_seconds(
                torch_decode(True), args.decode_reps)
        for key in ("image_encoder_ms", "backbone_only_ms", "prompt_decode_ms"):
            r = result[key]
            for name in list(r):
                r[name] = round(r[name], 3)
            r["speedup_onnx_vs_torch_fp32"] = round(r["torch_fp32"] / r["onnxruntime_fp32"], 2)
        d = result["prompt_decode_ms"]
        d["speedup_onnx_int8_vs_torch_fp32"] = round(d["torch_fp32"] / d["onnxruntime_int8"], 2)
        d["speedup_onnx_vs_torch_fp32_image_cache"] = round(d["torch_fp32_image_cache"] /
                                                            d["onnxruntime_fp32_image_cache"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
