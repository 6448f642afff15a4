"""Evaluate the embedded-default teachers on fresh seeds (the ``test`` split) and draw PNG grids.

``samclip teachers eval`` prints JSON with stable keys:
- ``clip.zero_shot``: shape top-1/top-3 on single-object scenes (prompt ensemble);
- ``clip.retrieval``: image<->caption recall on multi-object scenes;
- ``clip.heldout_pairs``: for each held-out (colour, shape) pair, how often the teacher picks the
  right "colour shape" phrase among all colour x shape phrases for the target's crop-free scene
  (a compositional probe; the teacher never saw these pairs in captions);
- ``sam``: box / point mIoU on every instance of multi-object scenes, with ``by_category`` (per shape) and
  ``by_area`` (per bucket of visible area);
- ``generation``: scene-world images/s.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..data import HELDOUT_PAIRS, composition_scene, generate_scene, split_seeds, write_grid
from ..data.banks import build_bank
from ..eval.prompt_seg import prompt_miou
from ..eval.zeroshot import retrieval_recall, single_object_eval_set, zero_shot_accuracy
from ..factory import load_clip, load_sam
from ..prompts import interior_points
from .clip_teacher import clip_encoders


def generation_speed(n: int = 100) -> dict[str, float]:
    out = {}
    for size in (64, 256):
        t0 = time.perf_counter()
        for s in range(n):
            generate_scene(40_000_000 + s, size)
        out[f"images_per_s_{size}px"] = n / (time.perf_counter() - t0)
    return out


@torch.no_grad()
def heldout_pair_probe(model, tokenizer, n_per_pair: int = 20) -> dict[str, float]:  # noqa: ANN001
    """Single-scene probe of the held-out (colour, shape) pairs: does "a <colour> <shape>" score
    highest for a scene containing that pair, among the pair's colour with other shapes and the
    pair's shape with other colours (the distractors composition_scene puts in the image)?"""
    from ..data import COLOURS, SHAPES

    enc_img, enc_txt = clip_encoders(model, tokenizer)
    size = model.config.vision.image_size
    hits, total = 0, 0
    for colour, shape in sorted(HELDOUT_PAIRS):
        phrases = [f"a {colour} {shape}"] + [f"a {colour} {s}" for s in SHAPES if s != shape]
        phrases += [f"a {c} {shape}" for c in COLOURS if c != colour]
        txt = enc_txt(phrases)
        imgs = np.stack([composition_scene(seed, size, (colour, shape), distractors=False, max_extra=0).image
                         for seed in split_seeds("test", n_per_pair, start=900_000)])
        sims = enc_img(imgs) @ txt.T
        hits += int((sims.argmax(1) == 0).sum())
        total += len(imgs)
    return {"top1": 100 * hits / total, "n": total}


def teachers_eval(sam_source: str = "tiny-synthetic", clip_source: str = "tiny-synthetic",
                  quick: bool = False) -> dict:
    n_single, n_scenes, n_sam = (200, 200, 50) if quick else (1200, 1000, 300)
    clip = load_clip(clip_source)
    tok = clip.tokenizer
    size = clip.config.vision.image_size
    enc_img, enc_txt = clip_encoders(clip, tok)
    imgs, labels = single_object_eval_set("test", n_single, size)
    scenes = build_bank("test", n_scenes, size, workers=1)
    result = {
        "split": "test",
        "clip": {
            "zero_shot": zero_shot_accuracy(enc_img, enc_txt, imgs, labels),
            "retrieval": retrieval_recall(enc_img, enc_txt, scenes.images, scenes.captions),
            "heldout_pairs": heldout_pair_probe(clip, tok, 5 if quick else 20),
        },
    }
    sam = load_sam(sam_source)
    sam_bank = build_bank("test", n_sam, sam.img_size, workers=1)
    result["sam"] = prompt_miou(sam, sam_bank, breakdown=True, zoom=True)
    result["generation"] = generation_speed(20 if quick else 100)
    return result


@torch.no_grad()
def teacher_grids(sam_source: str, out: Path, n: int = 8) -> list[Path]:
    """``samples.png`` (scenes, masks, captions) and ``sam_predictions.png`` (one-point predictions)."""
    out.mkdir(parents=True, exist_ok=True)
    sam = load_sam(sam_source)
    scenes = [generate_scene(s, sam.img_size) for s in split_seeds("test", n)]
    paths = [write_grid(scenes, out / "samples.png")]
    preds = []
    gen = torch.Generator().manual_seed(0)
    for sc in scenes:
        masks = torch.from_numpy(sc.instance_masks)
        img = torch.from_numpy(sc.image).permute(2, 0, 1)[None]
        emb = sam.image_embeddings(sam.preprocess(img))
        pts = interior_points(masks, gen)[:, None]
        low, iou = sam.decode(emb, pts, torch.ones(pts.shape[:2], dtype=torch.long))
        best = low[torch.arange(low.shape[0]), iou.argmax(1)][:, None]
        up = sam.postprocess_masks(best, sc.image.shape[:2], sc.image.shape[:2])[:, 0] > 0
        preds.append(up.numpy())
    paths.append(write_grid(scenes, out / "sam_predictions.png", predictions=preds))
    return paths
