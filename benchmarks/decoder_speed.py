"""Per-prompt decode latency: the decoder's inference path vs its plain (training) path, in one run.

Without autograd, SAM's mask decoder folds the image-sized attention projections into the few prompt
tokens (``TokenAttention._few_queries`` / ``_few_keys``), runs the output upscaling as matmuls on
token-major features (``MaskDecoder._masks_channels_last``) and reuses the dense positional encoding. The
plain path (what training runs, and what every decode ran before) is timed as the peer: the same call under
``torch.enable_grad()`` with no parameter requiring a gradient, so nothing is recorded for autograd.

A third path is what ``Predictor`` runs: the inference path given the image's first-layer cache
(``Sam.decoder_image_cache``: the image tokens with the no-mask embedding and the first layer's projections
of them, computed once per image), so the first layer's image-sized products are not redone per prompt; in
bf16 it runs, as ``Predictor`` does, bf16 embeddings through the fp32 weights without autocast: every
image-sized product in bf16, the prompt tokens' small ones in fp32 (where they are ~3x faster), no weight
cast per call; in fp32 where the embedding elements x prompts are under ``Predictor.mixed_decode_min_elements``
(one prompt on a tiny model).

Workload: ``Sam.decode`` of one prompt (a foreground point, or ``--box``) on cached image embeddings, multimask
output, low-resolution logits; ``--prompts N`` decodes N points (or boxes) of one image in one call, as the
everything mode does (there the first layer works once per image even without the cache,
``TwoWayAttentionBlock.forward_projected``). ``--postprocess`` adds the upsampling to a ``--height`` x
``--width`` image as ``Predictor.predict`` does. The paths alternate, ``--rounds`` times ``--reps`` calls
each; the median per path is reported with the ratios and the largest difference of the outputs. Speed
does not depend on the weight values: the model is randomly initialised. ``--dtype`` runs every path under
bf16 autocast (``auto``, the default: where the CPU multiplies bf16 natively, as ``Predictor`` does). With
``--device cuda`` every call ends with a device synchronisation, and the cached path runs under autocast as
``Predictor`` does on a GPU. Prints JSON, with the Predictor path's floating-point operations per call and
the floor they set: that count at the rate of one large square matrix product in the same precision on the
same threads (``floor_ms_at_matmul_rate``; the decode's own products are smaller, so slower per FLOP).

    .venv/bin/python benchmarks/decoder_speed.py --preset sam-vit-b
    python benchmarks/decoder_speed.py --preset sam-vit-b --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import samclip
from _flops import count_flops, matmul_gflops_per_s
from _timing import parse_device, synchronize
from samclip.allocator import tune_malloc
from samclip.precision import autocast, describe_machine, resolve_bf16


def main() -> None:
    tune_malloc()  # both sides of every comparison run with the same allocator (samclip.allocator)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="sam-vit-b", help="a SAM preset (sam-vit-b, sam-vit-l, sam-synthetic, ...)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--box", action="store_true", help="a box prompt instead of a point")
    ap.add_argument("--prompts", type=int, default=1, help="prompts of one image per call (everything mode: 64+)")
    ap.add_argument("--postprocess", action="store_true", help="also upsample the logits to the image size")
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                    help="bf16 autocast for every path (auto: where it is fast, as Predictor decides)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    args = ap.parse_args()
    dev = parse_device(ap, args.device)
    bf16 = resolve_bf16(args.dtype, dev)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sam = samclip.create_sam(args.preset).eval().requires_grad_(False).to(dev)
    enc = sam.config.image_encoder
    with torch.no_grad():  # as after Predictor.set_image: the encoder pass's large tensors also raise glibc's
        # malloc thresholds, so the decodes reuse freed heap pages (on random embeddings alone each ViT-B
        # decode would fault in ~6,000 fresh pages, ~20% of its time)
        emb = sam.image_embeddings(torch.randn(1, 3, enc.img_size, enc.img_size, device=dev))
    side = float(enc.img_size)
    if args.prompts < 1:
        ap.error("--prompts must be >= 1")
    corners = (torch.rand(args.prompts, 2, 2).sort(1).values * side).to(dev)
    if args.box:
        prompt = {"boxes": corners.reshape(-1, 4)}
    else:
        prompt = {"point_coords": corners[:, :1],
                  "point_labels": torch.ones(args.prompts, 1, dtype=torch.long, device=dev)}
    scale = side / max(args.height, args.width)
    input_size = (round(args.height * scale), round(args.width * scale))

    # what Predictor runs: in bf16, bf16 image embeddings through the fp32 weights without autocast (image-sized
    # products in bf16, the prompt tokens' small ones in fp32), from a first-layer cache made under autocast;
    # small embeddings (tiny models) in fp32; on a GPU: bf16 embeddings under autocast
    on_gpu = dev.type != "cpu"
    mixed = bf16 and (on_gpu or args.prompts * emb[0].numel() >= samclip.Predictor.mixed_decode_min_elements)
    emb_mixed = emb.bfloat16() if mixed else emb
    with torch.no_grad(), autocast(dev, mixed):
        cache = sam.decoder_image_cache(emb_mixed)  # what Predictor keeps per image after its first decode

    def decode(image_cache: object = None) -> torch.Tensor:
        if image_cache is not None:
            with autocast(dev, bf16 and on_gpu):
                masks, _ = sam.decode(emb_mixed, multimask_output=True, image_cache=image_cache, **prompt)
        else:
            with autocast(dev, bf16):
                masks, _ = sam.decode(emb, multimask_output=True, **prompt)
        with autocast(dev, bf16):
            if args.postprocess:
                masks = sam.postprocess_masks(masks, input_size, (args.height, args.width))
        out = masks.float()
        synchronize(dev)
        return out

    def inference() -> torch.Tensor:
        with torch.no_grad():
            return decode()

    def cached() -> torch.Tensor:
        with torch.no_grad():
            return decode(cache)

    def plain() -> torch.Tensor:
        with torch.enable_grad():
            return decode()

    paths = (("cached_first_layer", cached), ("inference_path", inference), ("plain_path", plain))
    times: dict[str, list[float]] = {name: [] for name, _ in paths}
    for _, fn in paths:  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in paths:
            for _ in range(args.reps):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    ref = plain()
    diff = max((inference() - ref).abs().max().item(), (cached() - ref).abs().max().item())
    gflop = count_flops(cached) / 1e9  # the Predictor's path, per call
    rate = matmul_gflops_per_s(dev, bf16)
    print(json.dumps({
        "preset": args.preset, "machine": describe_machine(dev), "threads": args.threads,
        "dtype": "bf16" if bf16 else "fp32",
        "predictor_decode": ("autocast" if on_gpu else "mixed") if mixed else "fp32",
        "prompt": "box" if args.box else "point",
        "prompts_per_call": args.prompts,
        "postprocess": [args.height, args.width] if args.postprocess else None,
        "calls_per_path": args.rounds * args.reps,
        "cached_first_layer_ms": round(ms["cached_first_layer"], 2),
        "inference_path_ms": round(ms["inference_path"], 2), "plain_path_ms": round(ms["plain_path"], 2),
        "speedup": round(ms["plain_path"] / ms["inference_path"], 3),
        "speedup_cached": round(ms["plain_path"] / ms["cached_first_layer"], 3), "max_abs_diff": diff,
        "cached_first_layer_gflop": round(gflop, 3),
        "matmul_gflops_per_s": round(rate, 1),
        "floor_ms_at_matmul_rate": round(1000 * gflop / rate, 2),
    }, indent=2))
    print(f"decode of {args.prompts} prompt(s): {ms['cached_first_layer']:.1f} ms with the image's first-layer cache "
          f"(as in Predictor), {ms['inference_path']:.1f} ms without, plain path {ms['plain_path']:.1f} ms: "
          f"{ms['plain_path'] / ms['cached_first_layer']:.2f}x / {ms['plain_path'] / ms['inference_path']:.2f}x "
          "(target <= 10 ms at ViT-B on this CPU)")


if __name__ == "__main__":
    main()
