"""SAM ViT-B image encoder at 1024 px: samclip vs transformers.SamModel.get_image_embeddings.

Same CPU, same thread count, one run, random weights of the published ViT-B shape (speed does not
depend on the values). Prints seconds per image and ratios against transformers' fp32.

    .venv/bin/python benchmarks/encoder_speed.py [--reps 2] [--size 1024] [--threads N]
"""

from __future__ import annotations

import argparse
import json

import torch

from _timing import median_seconds
from samclip.allocator import tune_malloc


def main() -> None:
    tune_malloc()  # both sides of every comparison run with the same allocator (samclip.allocator)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--skip-hf-bf16", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    import samclip

    ours = samclip.create_sam("sam-vit-b").image_encoder.eval()
    hf_cfg = transformers.SamConfig(
        vision_config=transformers.SamVisionConfig(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11],
        )
    )
    hf = transformers.SamModel(hf_cfg).eval()
    x = torch.randn(1, 3, args.size, args.size)

    def run_ours() -> None:
        with torch.inference_mode():
            ours(x)

    def run_ours_bf16() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            ours(x)

    def run_hf() -> None:
        with torch.inference_mode():
            hf.get_image_embeddings(x)

    def run_hf_bf16() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            hf.get_image_embeddings(x)

    res = {"threads": args.threads, "size": args.size, "reps": args.reps}
    res["transformers_fp32_s"] = median_seconds(run_hf, args.reps)
    if not args.skip_hf_bf16:
        res["transformers_bf16_s"] = median_seconds(run_hf_bf16, args.reps)
    res["samclip_fp32_s"] = median_seconds(run_ours, args.reps)
    res["samclip_bf16_s"] = median_seconds(run_ours_bf16, args.reps)
    res["speedup_fp32_vs_transformers_fp32"] = res["transformers_fp32_s"] / res["samclip_fp32_s"]
    res["speedup_bf16_vs_transformers_fp32"] = res["transformers_fp32_s"] / res["samclip_bf16_s"]
    if "transformers_bf16_s" in res:
        res["speedup_bf16_vs_transformers_bf16"] = res["transformers_bf16_s"] / res["samclip_bf16_s"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}, indent=2))
    print(f"targets: fp32 >= 1.1x -> {res['speedup_fp32_vs_transformers_fp32']:.2f}x; "
          f"bf16 >= 3.0x -> {res['speedup_bf16_vs_transformers_fp32']:.2f}x (vs transformers fp32)")


if __name__ == "__main__":
    main()
