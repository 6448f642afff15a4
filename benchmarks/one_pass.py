"""One backbone pass vs two models: the merged model through the Predictor against SAM + CLIP teachers.

Jobs, on one HxW image (default 768x1024): classify into 12 labels, 16 single-point prompt decodes,
and a 12-class semantic map (plus background), at the original size.

  A (merged, one pass): ``Predictor.set_image`` (backbone + SAM neck), ``classify`` (CLIP head, pooled),
    16 x ``predict``, ``semantic_segment`` (CLIP head per-patch; head tokens shared with classify).
  B (two models): the SAM teacher through the same Predictor (set_image + 16 x predict), plus the CLIP
    teacher: one tower pass at its native size for classification and one MaskCLIP-style dense pass
    (``samclip.eval.baselines.maskclip_patch_embeddings``: value embeddings of the last block through
    ``ln_post`` and ``proj``) for the semantic map, upsampled to the image and argmaxed like A's.
    The dense pass runs at ``--clip-semseg-size``: by default the size giving the CLIP teacher the same
    patch grid as the merged model's map ("matched"); a 448 px pass is timed too for reference.

Text embeddings are computed before timing for both pipelines (same text tower; both cache them).
Both pipelines run in the same precision: ``--dtype auto`` (default) is bf16 autocast where the CPU
multiplies bf16 natively (AMX / AVX512-BF16) and fp32 elsewhere, as the Predictor does (on a GPU: bf16).
``--device cuda`` runs both pipelines on the GPU (each timed part ends with a device synchronisation).
Weights: ``tiny-synthetic`` shipped weights when present, else random weights of the same presets;
``--preset vit-b`` builds random
SAM ViT-B (1024 px) + CLIP ViT-B/16 teachers and merges them (speed does not depend on the values);
``--preset paper`` does the same with the paper's CLIP ViT-L/14 teacher.

``--flops`` also counts both pipelines' floating-point operations: their ratio is the ceiling of the timed one
where time follows the multiply-adds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/one_pass.py --preset vit-b --reps 1
    python benchmarks/one_pass.py --preset paper --device cuda --reps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

import samclip
from _flops import count_flops
from _timing import parse_device, synchronize
from samclip.allocator import tune_malloc
from samclip.data.captions import class_prompt_templates
from samclip.eval.baselines import maskclip_patch_embeddings
from samclip.models import CLIP, SamClip, clip_preset
from samclip.precision import autocast, describe_machine, resolve_bf16
from samclip.predictor import BACKGROUND_PROMPTS, Predictor
from samclip.tokenizer import ClipTokenizer

LABELS = ["star", "ring", "heart", "circle", "square", "triangle", "cross", "arrow", "moon", "hexagon",
          "diamond", "ellipse"]
# "paper": SAM-CLIP's own pairing (SAM ViT-B merged with a CLIP ViT-L/14 teacher)
BF16 = False  # set from --dtype in main()
DEVICE = torch.device("cpu")  # set from --device in main()
PRESETS = {"tiny-synthetic": ("sam-synthetic", "clip-synthetic"), "vit-b": ("sam-vit-b", "clip-vit-b-16"),
           "paper": ("sam-vit-b", "clip-vit-l-14")}


def now() -> float:
    """perf_counter after the device's queued work is done."""
    synchronize(DEVICE)
    return time.perf_counter()


def build_models(preset: str) -> tuple[SamClip, samclip.Sam, CLIP, str]:
    """(merged, SAM teacher, CLIP teacher, where the weights came from), on ``DEVICE``."""
    merged, sam, clip, note = _build_models(preset)
    return merged.to(DEVICE), sam.to(DEVICE), clip.to(DEVICE), note


def _build_models(preset: str) -> tuple[SamClip, samclip.Sam, CLIP, str]:
    if preset == "tiny-synthetic":
        try:
            return (samclip.load_model(preset), samclip.load_sam(preset), samclip.load_clip(preset),
                    "shipped tiny-synthetic weights")
        except (FileNotFoundError, KeyError, samclip.CheckpointError) as err:
            note = f"random weights (tiny-synthetic weights unavailable: {type(err).__name__})"
    else:
        note = "random weights"
    sam_name, clip_name = PRESETS[preset]
    torch.manual_seed(0)
    sam = samclip.create_sam(sam_name).eval()
    base = clip_preset(clip_name)
    corpus = [t.format(label) for label in LABELS for t in class_prompt_templates()] + list(BACKGROUND_PROMPTS)
    tok = ClipTokenizer.train(corpus * 3, vocab_size=512, context_length=base.text.context_length)
    cfg = base.replace(text=base.text.replace(vocab_size=tok.vocab_size, sot_token_id=tok.sot_token_id,
                                              eot_token_id=tok.eot_token_id))
    clip = CLIP.from_config(cfg).eval()
    clip.tokenizer = tok
    merged = SamClip.from_teachers(sam, clip).eval()
    return merged, sam, clip, f"{note}: {sam_name} + {clip_name}"


def clip_text_embeddings(clip: CLIP, labels: list[str]) -> torch.Tensor:
    """(K+1)xE: background (mean of BACKGROUND_PROMPTS) then the template-averaged labels, normalised."""
    from samclip.data.captions import class_prompts

    rows = []
    with torch.no_grad(), autocast(DEVICE, BF16):
        for prompts in [list(BACKGROUND_PROMPTS), *[class_prompts(label) for label in labels]]:
            emb = F.normalize(clip.encode_text(clip.tokenizer(prompts).to(DEVICE)).float(), dim=-1)
            rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


def _rounded(obj: object) -> object:
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return obj


def main() -> None:
    tune_malloc()  # both sides of every comparison run with the same allocator (samclip.allocator)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny-synthetic")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each pipeline first")
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--latency-decodes", type=int, default=50)
    ap.add_argument("--clip-semseg-size", type=int, default=0, help="0: the merged model's patch grid")
    ap.add_argument("--tta", action="store_true",
                    help="merged classify with the model's test-time augmentation (default: one view, like the "
                         "CLIP teacher's)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: bf16 autocast only where the device multiplies bf16 natively")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--flops", action="store_true",
                    help="also count each pipeline's floating-point operations (one run each): B / A is the "
                         "ceiling of the speed ratio where time follows the multiply-adds")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global BF16, DEVICE
    DEVICE = parse_device(ap, args.device)
    BF16 = resolve_bf16(args.dtype, DEVICE)

    merged, sam, clip, source = build_models(args.preset)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    points = np.stack([rng.uniform(0, args.width - 1, args.prompts), rng.uniform(0, args.height - 1, args.prompts)], 1)
    ones = np.ones(1)

    # ------------------------------------------------------------------ A: merged, one pass
    pred = Predictor(merged, bf16=BF16)
    pred.text_embeddings(LABELS)  # text side outside the timing (cached; the same for B)
    pred._background_embedding()

    def a_parts() -> dict[str, float]:
        t = [now()]
        pred.set_image(img)
        t.append(now())
        pred.classify(LABELS, tta=args.tta)
        t.append(now())
        for p in points:
            pred.predict(point_coords=p[None], point_labels=ones)
        t.append(now())
        pred.semantic_segment(LABELS)
        t.append(now())
        names = ["set_image_s", "classify_s", "decodes_s", "semantic_segment_s"]
        return {n: b - a for n, a, b in zip(names, t, t[1:])}

    # ------------------------------------------------------------------ B: SAM + CLIP teachers
    sam_pred = Predictor(sam, bf16=BF16)
    txt = clip_text_embeddings(clip, LABELS)
    scale = clip.logit_scale.detach().float().exp().clamp(max=100)  # on DEVICE, as txt
    clip_size = clip.config.vision.image_size
    grid = merged.img_size // merged.sam.config.image_encoder.patch_size
    matched = args.clip_semseg_size or grid * clip.config.vision.stride

    def clip_classify() -> np.ndarray:
        x = torch.from_numpy(img).to(DEVICE).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=(clip_size, clip_size), mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad(), autocast(DEVICE, BF16):
            emb = clip.encode_image(clip.normalize_images(x), normalize=True).float()
        return (scale * emb @ txt[1:].T).softmax(-1)[0].cpu().numpy()

    def clip_semseg(size: int) -> np.ndarray:
        with autocast(DEVICE, BF16):
            patch = maskclip_patch_embeddings(clip, img, size).float()  # GxGxE
        logits = scale * torch.einsum("ghe,ke->kgh", patch, txt)
        up = F.interpolate(logits[None], (args.height, args.width), mode="bilinear", align_corners=False)[0]
        return up.max(0).indices.cpu().numpy()

    def b_parts() -> dict[str, float]:
        t = [now()]
        sam_pred.set_image(img)
        t.append(now())
        for p in points:
            sam_pred.predict(point_coords=p[None], point_labels=ones)
        t.append(now())
        clip_classify()
        t.append(now())
        clip_semseg(matched)
        t.append(now())
        if matched != 448:
            clip_semseg(448)
        t.append(now())
        names = ["sam_set_image_s", "sam_decodes_s", "clip_classify_s", "clip_semseg_matched_s", "clip_semseg_448_s"]
        return {n: b - a for n, a, b in zip(names, t, t[1:])}

    for _ in range(args.warmup):
        a_parts()
        b_parts()
    a_runs = [a_parts() for _ in range(args.reps)]
    b_runs = [b_parts() for _ in range(args.reps)]
    a = {k: statistics.median(r[k] for r in a_runs) for k in a_runs[0]}
    b = {k: statistics.median(r[k] for r in b_runs) for k in b_runs[0]}
    if matched == 448:
        b["clip_semseg_448_s"] = b["clip_semseg_matched_s"]
    a_total = statistics.median(sum(r.values()) for r in a_runs)
    b_common = b["sam_set_image_s"] + b["sam_decodes_s"] + b["clip_classify_s"]
    b_matched = b_common + b["clip_semseg_matched_s"]
    b_448 = b_common + b["clip_semseg_448_s"]

    # --------------------------------------------------------------- per-prompt decode latency
    pred.set_image(img)
    sam_pred.set_image(img)
    lat_pts = rng.uniform(0, 1, (args.latency_decodes, 2)) * [args.width - 1, args.height - 1]
    state = pred.state

    def latencies(fn: Callable[[np.ndarray], object]) -> float:
        fn(lat_pts[0])
        out = []
        for p in lat_pts:
            t0 = now()
            fn(p)
            out.append(now() - t0)
        return 1000 * statistics.median(out)

    def raw_decode(p: np.ndarray) -> None:  # what predict() runs before the upsampling to the image
        coords = torch.tensor(p, dtype=torch.float32, device=DEVICE).reshape(1, 1, 2)
        pred._decode(state, coords, torch.ones(1, 1, dtype=torch.long, device=DEVICE), None, None, True)

    res = {
        "preset": args.preset, "weights": source, "threads": args.threads, "bf16_autocast": BF16,
        "machine": describe_machine(DEVICE),
        "image_hw": [args.height, args.width], "frame": merged.img_size, "labels": len(LABELS),
        "prompts": args.prompts, "reps": args.reps, "warmup": args.warmup, "merged_classify_tta": args.tta,
        "clip_semseg_size_matched": matched, "clip_classify_size": clip_size,
        "A_merged": {**a, "total_s": a_total},
        "B_two_models": {**b, "total_matched_s": b_matched, "total_448_s": b_448},
        "ratio_B_over_A": b_matched / a_total,
        "ratio_B448_over_A": b_448 / a_total,
        "decode_latency_ms_median": {
            "merged_predict": latencies(lambda p: pred.predict(point_coords=p[None], point_labels=ones)),
            "merged_decode_only": latencies(raw_decode),
            "sam_teacher_predict": latencies(lambda p: sam_pred.predict(point_coords=p[None], point_labels=ones)),
        },
    }
    if args.flops:
        a_flops = count_flops(a_parts)
        b_flops = [count_flops(part) for part in (lambda: sam_pred.set_image(img),
                                                  lambda: [sam_pred.predict(point_coords=p[None], point_labels=ones)
                                                           for p in points],
                                                  clip_classify, lambda: clip_semseg(matched))]
        res["gflops"] = {"A_merged": a_flops / 1e9, "B_two_models_matched": sum(b_flops) / 1e9,
                         "B_sam_set_image": b_flops[0] / 1e9, "B_sam_decodes": b_flops[1] / 1e9,
                         "B_clip": (b_flops[2] + b_flops[3]) / 1e9, "ratio_B_over_A": sum(b_flops) / a_flops}
    print(json.dumps(_rounded(res), indent=2))
    print(f"target B/A >= 1.8x: matched grid {res['ratio_B_over_A']:.2f}x, CLIP dense pass at 448 "
          f"{res['ratio_B448_over_A']:.2f}x; per-prompt predict "
          f"{res['decode_latency_ms_median']['merged_predict']:.1f} ms (target <= 10 ms at ViT-B)")


if __name__ == "__main__":
    main()
