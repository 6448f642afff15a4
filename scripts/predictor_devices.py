"""Every Predictor task on a device against the same tasks on the CPU: the GPU path's correctness check.

On scene-world test images (non-square, 200x300 and 300x200 HWC uint8 RGB) with the shipped tiny-synthetic
merged model, in fp32 on both sides: box and point prompts (multimask, zoomed), classify, semantic_segment
(coarse and refined), label_masks (max pooling and zoom+crop), segment_text and generate with a vocabulary.
Prints one JSON object of agreement measures (mask IoU, pixel agreement, largest probability difference, equal
label / count shares) and exits 1 when one falls under its floor: floating-point differences between devices
may flip a pixel or a near-tie, never a task.

    python scripts/predictor_devices.py --device cuda        # on a GPU machine (part of scripts/gpu_checks.sh)
    .venv/bin/python scripts/predictor_devices.py --device cpu   # the wiring, on a CPU (everything agrees)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

import samclip
from samclip.data import SHAPES, generate_scene, split_seeds

LABELS = list(SHAPES)
FLOORS = {"mask_iou": 0.97, "pixel_agreement": 0.97, "label_agreement": 0.75, "count_ratio": 0.75}
MAX_PROB_DIFF = 0.02


def _images(n: int) -> list[np.ndarray]:
    out = []
    for k, seed in enumerate(split_seeds("test", n, start=900)):
        img = generate_scene(seed, 300).image
        out.append(np.ascontiguousarray(img[50:250] if k % 2 == 0 else img[:, 50:250]))  # 200x300 / 300x200
    return out


def run_tasks(device: str, images: list[np.ndarray]) -> list[dict[str, Any]]:
    """Every task's outputs (numpy) per image, on ``device``."""
    pred = samclip.Predictor(samclip.load_model("tiny-synthetic", device=device), bf16=False)
    results = []
    for img in images:
        h, w = img.shape[:2]
        box = np.array([w * 0.2, h * 0.2, w * 0.6, h * 0.7])
        point = np.array([[w * 0.5, h * 0.5]])
        pred.set_image(img)
        r: dict[str, Any] = {}
        r["box_masks"], r["box_scores"], _ = pred.predict(box=box)
        r["point_masks"], r["point_scores"], _ = pred.predict(point_coords=point, point_labels=np.ones(1))
        r["zoom_masks"], _, _ = pred.predict(box=box, zoom=True, multimask_output=False)
        r["classify"] = np.asarray(pred.classify(LABELS))
        r["coarse"] = pred.semantic_segment(LABELS).label_map
        r["refined"] = pred.semantic_segment(LABELS, refine=True).label_map
        masks = np.concatenate([r["box_masks"][:1], r["point_masks"][:1]])
        r["labels_max"] = np.asarray(pred.label_masks(masks, LABELS)[0])
        r["labels_zoom"] = np.asarray(pred.label_masks(masks, LABELS, pooling="zoom+crop", tta=True)[0])
        r["text_instances"] = len(pred.segment_text("star"))
        r["generated"] = len(pred.generate(vocabulary=LABELS))
        results.append(r)
    return results


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare(ref: list[dict[str, Any]], got: list[dict[str, Any]]) -> dict[str, float]:
    """Agreement of ``got`` with ``ref`` over all images (the worst image for the mask and map measures)."""
    out: dict[str, float] = {}
    for key in ("box_masks", "point_masks", "zoom_masks"):
        out[f"{key}_iou_min"] = min(_iou(a, b) for r, g in zip(ref, got) for a, b in zip(r[key], g[key]))
    for key in ("box_scores", "point_scores", "classify"):
        out[f"{key}_max_diff"] = max(float(np.abs(r[key] - g[key]).max()) for r, g in zip(ref, got))
    for key in ("coarse", "refined"):
        out[f"{key}_pixel_agreement_min"] = min(float((r[key] == g[key]).mean()) for r, g in zip(ref, got))
    for key in ("labels_max", "labels_zoom"):
        out[f"{key}_agreement"] = float(np.mean([np.mean(r[key] == g[key]) for r, g in zip(ref, got)]))
    for key in ("text_instances", "generated"):
        a, b = sum(r[key] for r in ref), sum(g[key] for g in got)
        out[f"{key}_count_ratio"] = min(a, b) / max(a, b, 1)
        out[f"{key}_cpu"], out[f"{key}_device"] = a, b
    return out


def failures(agreement: dict[str, float]) -> list[str]:
    bad = []
    for key, value in agreement.items():
        floor = next((f for k, f in FLOORS.items() if k in key), None)
        if key.endswith("_max_diff") and value > MAX_PROB_DIFF:
            bad.append(f"{key} = {value:.4f} > {MAX_PROB_DIFF}")
        elif floor is not None and value < floor:
            bad.append(f"{key} = {value:.4f} < {floor}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="the device compared with the CPU (default cuda)")
    ap.add_argument("--images", type=int, default=6)
    args = ap.parse_args()
    images = _images(args.images)
    agreement = compare(run_tasks("cpu", images), run_tasks(args.device, images))
    bad = failures(agreement)
    print(json.dumps({"device": args.device, "images": len(images), **agreement, "failures": bad}, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
