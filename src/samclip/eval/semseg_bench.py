"""Zero-shot semantic segmentation on the scene world: the merged model against baselines, one run.

Methods (the SAM-CLIP paper's comparison, in small):
  (a) ``clip_teacher_dense``  CLIP teacher alone, MaskCLIP-style per-patch features;
  (b) ``sam_plus_clip``       SAM-teacher everything-mode masks, each crop classified by the CLIP teacher;
  (c) ``merged_clip_head``    merged model, CLIP head only;
  (d) ``merged_both_heads``   merged model, CLIP head + SAM-head refinement (``semantic_segment(refine=True)``:
                              coarse-map points -> SAM-head masks, each re-named by the CLIP head's read
                              over it, mirrored view pooled in when the model has TTA);
  (d+) ``merged_both_heads_crops``  (d), with the masks whose read is unsure also read from their crops by
                              the merged model (``crop_margin=SEMSEG_CROP_MARGIN``; NOT one pass: a small
                              pass per such mask);
  (d') ``merged_both_heads_published``  the same with SAM-CLIP's composition as published (``relabel=False``:
                              per class its points + the coarse map as mask input, the coarse class kept);
  (e) ``merged_everything``   merged model, (b) in one pass: SAM-head everything-mode masks, each
                              labelled by mask pooling of the CLIP head's per-patch embeddings;
  (f) ``merged_everything_crops``  merged model alone as the two-model pipeline (b): the masks of (e),
                              each crop classified by the merged model (one model, one small pass per mask).
Every method sees the same images (test split, fresh seeds), the same class names (the 12 shapes)
and the same background prompts; mIoU over 13 classes (with background) and 12 (without), plus
seconds per image. Also: click / box labelling accuracy, mask pooling vs the crop baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data import SHAPES, generate_scene, split_seeds
from ..eval.baselines import crop_embeddings, maskclip_patch_embeddings
from ..eval.semseg import ConfusionMatrix, paired_bootstrap
from ..models import CLIP, Sam, SamClip
from ..predictor import BACKGROUND_PROMPTS, SEMSEG_CROP_MARGIN, Predictor
from .zeroshot import class_embeddings


def _text_table(encode_texts: Callable[[list[str]], torch.Tensor], labels: list[str]) -> torch.Tensor:
    """(1+K)xE: background (mean of BACKGROUND_PROMPTS) then each label's template ensemble."""
    bg = F.normalize(F.normalize(encode_texts(list(BACKGROUND_PROMPTS)).float(), dim=-1).mean(0), dim=-1)
    return torch.cat([bg[None], class_embeddings(encode_texts, labels)])


def _clip_text(clip: CLIP) -> Callable[[list[str]], torch.Tensor]:
    def enc(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return clip.encode_text(clip.tokenizer(texts), normalize=True).float()

    return enc


@torch.no_grad()
def dense_clip_map(clip: CLIP, image: np.ndarray, table: torch.Tensor) -> np.ndarray:
    """(a): HxW label map from MaskCLIP-style per-patch CLIP-teacher features."""
    emb = maskclip_patch_embeddings(clip, image)  # GxGxE
    logits = torch.einsum("ghe,ke->kgh", emb, table)[None]
    logits = F.interpolate(logits, image.shape[:2], mode="bilinear", align_corners=False)[0]
    return logits.max(0).indices.numpy()


@torch.no_grad()
def sam_plus_clip_map(sam_predictor: Predictor, clip: CLIP, image: np.ndarray, table: torch.Tensor,
                      points_per_side: int = 16) -> np.ndarray:
    """(b): everything-mode masks of the SAM teacher, each mask crop classified by the CLIP teacher
    (background is one of the classes); masks painted largest first so small ones stay visible."""
    sam_predictor.set_image(image)
    masks = sam_predictor.generate(points_per_side=points_per_side)
    if not masks:
        return np.zeros(image.shape[:2], np.int64)
    emb = crop_embeddings(clip, image, np.stack([m["segmentation"] for m in masks]))
    return _paint_masks(image.shape[:2], masks, (emb @ table.T).argmax(-1).numpy())


def _paint_masks(shape: tuple[int, int], masks: list[dict], classes: np.ndarray) -> np.ndarray:
    """Label map from masks with one class each, painted largest first so small ones stay visible."""
    out = np.zeros(shape, np.int64)
    for k in np.argsort([-m["area"] for m in masks]):
        out[masks[k]["segmentation"]] = classes[k]
    return out


@torch.no_grad()
def merged_everything_map(predictor: Predictor, table: torch.Tensor, points_per_side: int = 16,
                          pooling: str = "auto", masks: list[dict] | None = None) -> np.ndarray:
    """(e) / (f): everything-mode masks of the merged model's SAM head on the image set last (or ``masks``,
    the output of its ``generate``), each labelled (background is one of the classes) by
    :meth:`Predictor.mask_embeddings` with ``pooling``: the default reads the cached pass (e, one pass),
    ``"crop"`` re-encodes each mask's crop with the merged model (f, one model but a pass per mask)."""
    if masks is None:
        masks = predictor.generate(points_per_side=points_per_side)
    if not masks:
        return np.zeros(predictor.original_size, np.int64)
    emb, _ = predictor.mask_embeddings(np.stack([m["segmentation"] for m in masks]), pooling=pooling)
    return _paint_masks(predictor.original_size, masks, (emb @ table.T.to(emb.device)).argmax(-1).cpu().numpy())


def semseg_benchmark(merged: SamClip, sam_teacher: Sam, clip_teacher: CLIP, n_images: int = 100,
                     size: int | None = None, points_per_side: int = 16, split: str = "test") -> dict:
    """Run (a)-(f) on ``n_images`` scenes of ``split`` ("test" to report, "val" to choose settings);
    returns mIoU, per-class IoU and time per image."""
    size = size or sam_teacher.img_size
    labels = list(SHAPES)
    names = ["background", *labels]
    table = _text_table(_clip_text(clip_teacher), labels)
    from ..merge.run import merged_encoders  # local: merge.run imports the eval package

    merged_table = _text_table(merged_encoders(merged, merged.config.clip_size)[1], labels)
    merged_pred = Predictor(merged)
    sam_pred = Predictor(sam_teacher)
    cms = {k: ConfusionMatrix(len(names)) for k in ("a", "b", "c", "d", "d+", "d'", "e", "f")}
    times = {k: 0.0 for k in cms}
    per_image: dict[str, list[np.ndarray]] = {k: [] for k in ("b", "d", "d+")}  # for the paired bootstrap
    scenes = [generate_scene(s, size) for s in split_seeds(split, n_images, start=500_000)]
    for sc in scenes:
        before = {k: cms[k].matrix.copy() for k in per_image}
        gt = sc.semantic_mask.astype(np.int64)
        t = time.perf_counter()
        cms["a"].update(dense_clip_map(clip_teacher, sc.image, table), gt)
        times["a"] += time.perf_counter() - t
        t = time.perf_counter()
        cms["b"].update(sam_plus_clip_map(sam_pred, clip_teacher, sc.image, table, points_per_side), gt)
        times["b"] += time.perf_counter() - t
        t = time.perf_counter()
        merged_pred.set_image(sc.image)
        coarse = merged_pred.semantic_segment(labels, refine=False).label_map
        t_pass = time.perf_counter() - t
        cms["c"].update(coarse, gt)
        times["c"] += t_pass
        t = time.perf_counter()
        fine = merged_pred.semantic_segment(labels, refine=True).label_map
        times["d"] += t_pass + time.perf_counter() - t
        cms["d"].update(fine, gt)
        t = time.perf_counter()  # (d+) from a fresh pass, so that it pays for its own mirrored pass as (d) did
        merged_pred.set_image(sc.image)
        crops = merged_pred.semantic_segment(labels, refine=True, crop_margin=SEMSEG_CROP_MARGIN)
        cms["d+"].update(crops.label_map, gt)
        times["d+"] += time.perf_counter() - t
        t = time.perf_counter()
        cms["d'"].update(merged_pred.semantic_segment(labels, refine=True, relabel=False).label_map, gt)
        times["d'"] += t_pass + time.perf_counter() - t
        t = time.perf_counter()
        masks = merged_pred.generate(points_per_side=points_per_side)
        t_masks = t_pass + time.perf_counter() - t  # (e) and (f) share the pass and the masks
        for k, pooling in (("e", "auto"), ("f", "crop")):
            t = time.perf_counter()
            cms[k].update(merged_everything_map(merged_pred, merged_table, pooling=pooling, masks=masks), gt)
            times[k] += t_masks + time.perf_counter() - t
        for k, rows in per_image.items():
            rows.append(cms[k].matrix - before[k])
    keys = {"a": "clip_teacher_dense", "b": "sam_plus_clip", "c": "merged_clip_head", "d": "merged_both_heads",
            "d+": "merged_both_heads_crops", "d'": "merged_both_heads_published", "e": "merged_everything",
            "f": "merged_everything_crops"}
    result = {keys[k]: {**cm.summary(names), "seconds_per_image": times[k] / n_images} for k, cm in cms.items()}
    # is the one-pass map's gap to the two-model pipeline larger than the scenes' spread? (the same scenes resampled
    # for both: a paired bootstrap of the mIoU difference)
    stacks = {k: np.stack(v) for k, v in per_image.items()}
    result["paired_bootstrap"] = {"d_minus_b": paired_bootstrap(stacks["d"], stacks["b"]),
                                  "d+_minus_b": paired_bootstrap(stacks["d+"], stacks["b"])}
    result["n_images"] = n_images
    result["image_size"] = size
    return result


def labelling_benchmark(merged: SamClip, sam_teacher: Sam, clip_teacher: CLIP, n_images: int = 60,
                        size: int | None = None, split: str = "test") -> dict:
    """Click / box -> mask + label accuracy (labels: the 12 shapes). The merged model labels its own SAM-head
    mask four ways: ``mask_pooling`` (one pass: mean of the per-patch CLIP-head embeddings in the mask),
    ``max_pooling`` (one pass: the head's max-pool limited to the mask's patches),
    ``region_pooling`` (one pass: the CLIP head re-run on the mask's tokens) and ``merged_crop`` (the mask's
    crop re-encoded by the merged model: one small extra pass per mask); ``crop`` is OV-SAM's two-model
    baseline (SAM-teacher mask, crop classified by the CLIP teacher). ``max_pooling_tta`` is max pooling with
    the mirrored image's pass averaged in (``label_masks(tta=True)``, one extra pass per image);
    ``max_pooling_tta_crop`` sums that read with ``merged_crop``'s (``pooling="max+crop"``, ``tta=True``).
    ``zoom_tta`` and ``zoom_tta_crop`` label the zoomed mask (``predict(zoom=True)``) by ``pooling="zoom"`` and
    ``"zoom+crop"`` with ``tta=True`` (the mask read on its zoom window's pass). Scenes of ``split``."""
    size = size or sam_teacher.img_size
    labels = list(SHAPES)
    merged_pred, sam_pred = Predictor(merged), Predictor(sam_teacher)
    clip_table = class_embeddings(_clip_text(clip_teacher), labels)
    methods = {"mask_pooling": ("mean", False), "max_pooling": ("max", False), "max_pooling_tta": ("max", True),
               "region_pooling": ("region", False), "merged_crop": ("crop", False),
               "max_pooling_tta_crop": ("max+crop", True)}
    zoomed = {"zoom_tta": ("zoom", True), "zoom_tta_crop": ("zoom+crop", True)}  # of the zoomed mask
    hits = {f"{k}_{kind}": 0 for k in [*methods, *zoomed, "crop"] for kind in ("point", "box")}
    total = 0
    gen = np.random.default_rng(0)
    for seed in split_seeds(split, n_images, start=600_000):
        sc = generate_scene(seed, size)
        merged_pred.set_image(sc.image)
        sam_pred.set_image(sc.image)
        for obj, gt_mask in zip(sc.objects, sc.instance_masks):
            ys, xs = np.nonzero(gt_mask)
            if len(ys) == 0:
                continue
            k = gen.integers(len(ys))
            point = np.array([[xs[k], ys[k]]], np.float32)
            box = np.array(obj.bbox_xyxy, np.float32)
            truth = labels.index(obj.category)
            for kind, kwargs in (("point", {"point_coords": point, "point_labels": np.array([1])}),
                                 ("box", {"box": box})):
                multi = kind == "point"
                m, s, _ = merged_pred.predict(**kwargs, multimask_output=multi)
                mask = m[int(np.argmax(s))]
                for name, (pooling, tta) in methods.items():
                    idx, _ = merged_pred.label_masks(mask[None], labels, pooling=pooling, tta=tta)
                    hits[f"{name}_{kind}"] += int(idx[0] == truth)
                m, s, _ = merged_pred.predict(**kwargs, multimask_output=multi, zoom=True)
                mask = m[int(np.argmax(s))]
                for name, (pooling, tta) in zoomed.items():
                    idx, _ = merged_pred.label_masks(mask[None], labels, pooling=pooling, tta=tta)
                    hits[f"{name}_{kind}"] += int(idx[0] == truth)
                m, s, _ = sam_pred.predict(**kwargs, multimask_output=multi)
                mask = m[int(np.argmax(s))]
                emb = crop_embeddings(clip_teacher, sc.image, mask[None])
                hits[f"crop_{kind}"] += int(int((emb @ clip_table.T).argmax()) == truth)
            total += 1
    return {**{k: 100 * v / max(1, total) for k, v in hits.items()}, "n_objects": total}
