"""``samclip eval``: every measurement of a merged model in one JSON with stable keys + a markdown report.

Benchmarks:
- ``scenes`` (built in, fixed seeds of the test split, or of the val split with ``split="val"`` to choose
  settings without touching test): zero-shot top-1, prompt mIoU, semantic segmentation (a)-(f) (see
  :mod:`samclip.eval.semseg_bench`), click / box labelling, overlays;
- ``voc``: semantic mIoU on a VOC-style folder (``--data``, ``--labels`` in class-id order after
  background);
- ``coco``: box-prompted mask AP with pycocotools on COCO-format data (``--data`` images folder,
  ``--annotations`` instances json): ground-truth boxes as prompts, the SAM head's masks scored by
  their predicted IoU;
- ``classify``: zero-shot top-1 / top-5 on an image folder with one subfolder per class (ImageNet's
  validation layout), a CLIP teacher optionally beside the model (:mod:`samclip.eval.classification`);
- ``semseg``: semantic mIoU on an images folder + label-map folder in any dataset's id convention (ADE20K,
  COCO-Stuff, Cityscapes, VOC; :mod:`samclip.eval.semseg_real`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write_bytes
from ..data import SHAPES, generate_scene, split_seeds, write_grid
from ..models import CLIP, Sam, SamClip
from ..predictor import Predictor
from .merge_report import evaluate_merge, teacher_table
from .semseg import ConfusionMatrix, read_voc_folder
from .semseg_bench import labelling_benchmark, semseg_benchmark
from .text_instances import segment_text_benchmark

SPLITS = ("test", "val")


def scenes_benchmark(merged: SamClip, sam_t: Sam, clip_t: CLIP, out: Path, quick: bool = False,
                     split: str = "test", semseg_images: int | None = None) -> dict:
    """The scene-world report. ``semseg_images`` (default 100, 8 with ``quick``): scenes of the semantic
    segmentation comparison; a larger set contains the default one (the split's seeds in order)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if semseg_images is not None and semseg_images < 1:
        raise ValueError(f"semseg_images must be >= 1, got {semseg_images}")
    n = dict(n_single=150, n_scenes=20) if quick else {}
    result = {"benchmark": "scenes", **evaluate_merge(merged, sam_t, clip_t, **n, split=split)}
    result["semantic_segmentation"] = semseg_benchmark(merged, sam_t, clip_t, split=split,
                                                       n_images=semseg_images or (8 if quick else 100))
    result["labelling"] = labelling_benchmark(merged, sam_t, clip_t, n_images=6 if quick else 60, split=split)
    result["segment_text"] = segment_text_benchmark(merged, n_images=4 if quick else 60, split=split)
    out.mkdir(parents=True, exist_ok=True)
    result["overlays"] = str(write_overlays(merged, out / "overlays.png", split=split))
    return result


def write_overlays(merged: SamClip, path: Path, n: int = 4, split: str = "test") -> Path:
    """Inputs with ground truth, the coarse (CLIP head) and refined (both heads) semantic maps."""
    pred = Predictor(merged)
    scenes = [generate_scene(s, merged.img_size) for s in split_seeds(split, n, start=700_000)]
    maps = []
    for sc in scenes:
        pred.set_image(sc.image)
        coarse = pred.semantic_segment(list(SHAPES)).label_map
        fine = pred.semantic_segment(list(SHAPES), refine=True).label_map
        maps.append([sc.semantic_mask.astype(np.int64), coarse, fine])
    return write_grid(scenes, path, predictions=maps)


def voc_benchmark(merged: SamClip, root: str, labels: list[str], refine: bool = True,
                  limit: int | None = None) -> dict:
    pred = Predictor(merged)
    cm = ConfusionMatrix(len(labels) + 1)
    n = 0
    for _, image, target in read_voc_folder(root, limit=limit):
        pred.set_image(image)
        cm.update(pred.semantic_segment(labels, refine=refine, return_logits=False).label_map, target)
        n += 1
    return {"benchmark": "voc", "refine": refine, "n_images": n, **cm.summary(["background", *labels])}


def _read_coco_json(path: Path) -> dict:
    """A COCO instances file, checked: ValueError naming the file when it is not one."""
    if not path.is_file():
        raise ValueError(f"{path}: not a file (a COCO instances JSON is expected)")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise ValueError(f"{path}: a COCO instances JSON needs 'images', 'annotations' and 'categories'")
    _check_coco(data, path)
    return data


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_coco(data: dict, path: Path) -> None:
    """The fields the evaluation reads, checked before any model work (ValueError naming the file and the
    entry): images with ids and positive sizes; categories with ids; per annotation a known image and
    category, a finite ``bbox`` [x, y, w, h] that meets its image, and a ``segmentation`` that is polygons
    (lists of x, y pairs) or an RLE of its image's size."""
    from pycocotools import mask as mask_utils

    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list) or not all(isinstance(e, dict) for e in data[key]):
            raise ValueError(f"{path}: '{key}' must be a list of objects")
    sizes: dict[int, tuple[int, int]] = {}
    for k, im in enumerate(data["images"]):
        ok = isinstance(im.get("id"), int) and isinstance(im.get("file_name"), str) and all(
            isinstance(im.get(d), int) and not isinstance(im.get(d), bool) and im[d] > 0 for d in ("height", "width"))
        if not ok:
            raise ValueError(f"{path}: images[{k}] needs an integer 'id', a 'file_name' and positive integer "
                             "'height' / 'width'")
        sizes[im["id"]] = (im["height"], im["width"])
    categories = {c.get("id") for c in data["categories"]}
    for k, a in enumerate(data["annotations"]):
        where = f"{path}: annotations[{k}] (id {a.get('id')!r})"
        if a.get("image_id") not in sizes:
            raise ValueError(f"{where}: image_id {a.get('image_id')!r} is not in 'images'")
        if a.get("category_id") not in categories:
            raise ValueError(f"{where}: category_id {a.get('category_id')!r} is not in 'categories'")
        h, w = sizes[a["image_id"]]
        box = a.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)
                and box[2] >= 0 and box[3] >= 0):
            raise ValueError(f"{where}: 'bbox' must be [x, y, width, height], finite, width and height >= 0; "
                             f"got {box!r}")
        x, y, bw, bh = box
        if x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
            raise ValueError(f"{where}: 'bbox' {box} lies outside its {w}x{h} image")
        seg = a.get("segmentation")
        if isinstance(seg, list):
            # >= 2 pairs: COCO's own files hold a few degenerate 2-point polygons, which pycocotools reads
            if not seg or not all(isinstance(poly, list) and len(poly) >= 4 and len(poly) % 2 == 0
                                  and all(_is_number(v) for v in poly) for poly in seg):
                raise ValueError(f"{where}: polygon 'segmentation' must be lists of finite x, y pairs")
        elif isinstance(seg, dict):
            if seg.get("size") != [h, w]:
                raise ValueError(f"{where}: RLE 'size' {seg.get('size')!r} is not its image's [height, width] "
                                 f"[{h}, {w}]")
            counts = seg.get("counts")
            if isinstance(counts, list):
                if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
                    raise ValueError(f"{where}: uncompressed RLE 'counts' must be >= 0 integers summing to "
                                     f"height x width ({h * w})")
            elif isinstance(counts, str):
                try:
                    area = int(mask_utils.area({"size": [h, w], "counts": counts.encode()}))
                except Exception:  # noqa: BLE001 - pycocotools raises bare exceptions on corrupt strings
                    area = -1
                if not 0 <= area <= h * w:
                    raise ValueError(f"{where}: compressed RLE 'counts' is not a valid RLE string")
            else:
                raise ValueError(f"{where}: RLE 'counts' must be a string or a list of integers")
        else:
            raise ValueError(f"{where}: 'segmentation' must be polygons (a list) or an RLE (an object), got "
                             f"{type(seg).__name__ if seg is not None else 'nothing'}")


MAX_DETECTIONS = 100  # per image, COCOeval's largest maxDets


def read_detections(path: Path, image_ids: set[int], category_ids: set[int],
                    min_score: float = 0.0) -> dict[int, list[dict]]:
    """A COCO results file of boxes (``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``, what
    detectors write for ``COCO.loadRes``) -> per image, its detections with ``score >= min_score``, best first,
    at most :data:`MAX_DETECTIONS`. ValueError naming the file when it is not one."""
    try:
        rows = json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: a COCO results file is a JSON list of detections")
    out: dict[int, list[dict]] = {}
    for k, d in enumerate(rows):
        try:
            img, cat, score = int(d["image_id"]), int(d["category_id"]), float(d["score"])
            x, y, w, h = (float(v) for v in d["bbox"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: detection {k} lacks image_id / category_id / bbox [x, y, w, h] / "
                             "score") from None
        if img not in image_ids:
            raise ValueError(f"{path}: detection {k} is on image {img}, which the annotations do not have")
        if cat not in category_ids:
            raise ValueError(f"{path}: detection {k} has category {cat}, which the annotations do not have")
        if score >= min_score and w > 0 and h > 0:
            out.setdefault(img, []).append({"category_id": cat, "bbox": [x, y, w, h], "score": score})
    for dets in out.values():
        dets.sort(key=lambda d: -d["score"])
        del dets[MAX_DETECTIONS:]
    return out


def coco_box_prompt_ap(model: SamClip | Sam, images_dir: str, annotations: str, limit: int | None = None,
                       zoom: bool = False, detections: str | None = None, min_score: float = 0.0) -> dict:
    """Mask AP of box-prompted masks with pycocotools' COCOeval. The prompts are the ground-truth boxes (each
    mask scored by its predicted IoU), or with ``detections`` a detector's boxes (a COCO results file; each mask
    keeps its box's category and score, at most 100 per image above ``min_score``): the protocol of SAM's and
    SAM-CLIP's instance segmentation tables, which prompt with ViTDet's boxes. ``zoom``: each box through
    ``Predictor.predict(zoom=True)`` (a second backbone pass over its neighbourhood)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ..serve.images import read_image

    gt = COCO()
    gt.dataset = _read_coco_json(Path(annotations))
    gt.createIndex()
    if not Path(images_dir).is_dir():
        raise ValueError(f"{images_dir}: not a folder (the images of {annotations})")
    dets = None
    if detections is not None:
        dets = read_detections(Path(detections), set(gt.getImgIds()), set(gt.getCatIds()), min_score)
    pred = Predictor(model)
    results = []
    img_ids = sorted(gt.getImgIds())[:limit]
    for img_id in img_ids:
        if dets is None:
            prompts = [{"category_id": a["category_id"], "bbox": a["bbox"], "score": None}
                       for a in gt.loadAnns(gt.getAnnIds(imgIds=img_id, iscrowd=False))]
        else:
            prompts = dets.get(img_id, [])
        if not prompts:
            continue
        info = gt.loadImgs(img_id)[0]
        image = read_image(Path(images_dir) / info["file_name"])  # HxWx3 uint8, EXIF applied; ValueError if bad
        if image.shape[:2] != (info["height"], info["width"]):
            raise ValueError(f"{annotations}: image {img_id} ({info['file_name']}) is {image.shape[1]}x"
                             f"{image.shape[0]}, the annotations say {info['width']}x{info['height']}")
        pred.set_image(image)
        for p in prompts:
            x, y, w, h = p["bbox"]
            masks, scores, _ = pred.predict(box=np.array([x, y, x + w, y + h], np.float32), multimask_output=False,
                                            zoom=zoom)
            rle = mask_utils.encode(np.asfortranarray(masks[0].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            score = float(scores[0]) if p["score"] is None else p["score"]
            results.append({"image_id": img_id, "category_id": p["category_id"], "segmentation": rle, "score": score})
    if not results:
        raise ValueError(f"{detections or annotations}: no boxes to prompt with")
    ev = COCOeval(gt, gt.loadRes(results), "segm")
    ev.params.imgIds = img_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {"benchmark": "coco_box_prompt", "prompts": "detections" if dets is not None else "ground_truth_boxes",
            "detections": detections, "min_score": min_score if dets is not None else None,
            "mask_ap": 100 * ev.stats[0], "mask_ap50": 100 * ev.stats[1], "mask_ap75": 100 * ev.stats[2],
            "mask_ap_small": 100 * ev.stats[3], "mask_ap_medium": 100 * ev.stats[4],
            "mask_ap_large": 100 * ev.stats[5], "n_images": len(img_ids), "n_masks": len(results), "zoom": zoom}


def _breakdown_table(breakdown: dict) -> list[str]:
    """Markdown rows of box / point mIoU per shape category and per visible-area bucket, teacher vs merged."""
    if not breakdown:
        return []
    lines = ["## Prompt mIoU by shape and by visible area", "",
             "| group | instances | SAM teacher box | merged box | SAM teacher point | merged point | SAM teacher box, "
             "zoomed | merged box, zoomed |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for group in ("by_category", "by_area"):
        for key, r in breakdown.get(group, {}).items():
            zoom = [f"{r[k]:.1f}" if k in r else "" for k in ("sam_teacher_box_miou_zoom", "merged_box_miou_zoom")]
            lines.append(f"| {key} | {r['instances']} | {r['sam_teacher_box_miou']:.1f} | {r['merged_box_miou']:.1f} | "
                         f"{r['sam_teacher_point_miou']:.1f} | {r['merged_point_miou']:.1f} | {zoom[0]} | {zoom[1]} |")
    return [*lines, ""]


def _segment_text_table(st: dict | None) -> list[str]:
    """Markdown rows of text -> instances precision / recall / F1, verified vs not."""
    if not st:
        return []
    titles = {"verified": "coarse-map regions, verified by the CLIP head (default, one pass)",
              "unverified": "`verify=False`",
              "everything": "`candidates=\"everything\"`: everything-mode masks named by the zoom + crop reads"}
    rows = [f"| {title} | {st[k]['precision']:.1f} | {st[k]['recall']:.1f} | {st[k]['f1']:.1f} | "
            f"{st[k]['n_predicted']} |" for k, title in titles.items() if k in st]
    return [f"## Text -> instances (`segment_text`, {st['n_images']} scenes, {st['n_instances']} instances)", "",
            "Each shape as the phrase, the other 11 as its vocabulary; a hit: mask IoU > 0.5 with an unmatched "
            "instance of that shape.", "",
            "| | precision | recall | F1 | instances returned |", "| --- | --- | --- | --- | --- |", *rows, ""]


def _semseg_goals(ss: dict) -> list[str]:
    """Markdown rows: the inference issue's semantic-segmentation goals against this run's numbers."""
    a, b, c, d = (ss[k] for k in ("clip_teacher_dense", "sam_plus_clip", "merged_clip_head", "merged_both_heads"))

    def row(goal: str, left: float, right: float, extra: str = "") -> str:
        return f"| {goal} | {left:.1f} vs {right:.1f}{extra} | {'yes' if left >= right else '**no**'} |"

    speed = f", {d['seconds_per_image'] / b['seconds_per_image']:.2f}x (b)'s time" if b["seconds_per_image"] else ""
    boot = ss.get("paired_bootstrap", {})

    def spread(key: str) -> str:  # the difference's 95% interval over resampled scenes
        r = boot.get(key)
        return "" if r is None else (f"; difference {r['difference']:+.1f}, 95% interval {r['ci95'][0]:+.1f} .. "
                                     f"{r['ci95'][1]:+.1f} over the scenes resampled")

    rows = [row("(d) >= (c) + 3", d["miou"], c["miou"] + 3), row("(c) >= (a) + 10", c["miou"], a["miou"] + 10),
            row("(d) >= (b)", d["miou"], b["miou"], speed + spread("d_minus_b"))]
    plus = ss.get("merged_both_heads_crops")
    if plus:
        rows.append(row("(d+) >= (b)", plus["miou"], b["miou"],
                        (f", {plus['seconds_per_image'] / b['seconds_per_image']:.2f}x (b)'s time" if speed else "")
                        + spread("d+_minus_b")))
    return ["", "| goal | mIoU | met |", "| --- | --- | --- |", *rows]


def markdown_report(result: dict) -> str:
    return "\n".join(["# samclip evaluation", "", *report_sections(result)])


def report_sections(result: dict, teachers: bool = True) -> list[str]:
    """The report's markdown lines below its title; ``teachers=False`` leaves out the merged-vs-teachers table
    of a scene-world report (``samclip demo`` shows it first)."""
    lines = []
    if result.get("benchmark") == "scenes":
        ss = result["semantic_segmentation"]
        lines += [f"## Zero-shot semantic segmentation (scene world, {result.get('split', 'test')} split)", "",
                  "| method | mIoU | mIoU w/o background | s / image |", "| --- | --- | --- | --- |"]
        for key, title in (("clip_teacher_dense", "(a) CLIP teacher, MaskCLIP-style"),
                           ("sam_plus_clip", "(b) SAM-teacher everything + CLIP-teacher crops"),
                           ("merged_clip_head", "(c) merged, CLIP head"),
                           ("merged_both_heads", "(d) merged, CLIP head + SAM head (masks re-named by the CLIP head)"),
                           ("merged_both_heads_crops", "(d+) as (d), unsure masks also read from merged-model "
                            "crops (not one pass)"),
                           ("merged_both_heads_published", "(d') merged, both heads, SAM-CLIP's composition"),
                           ("merged_everything", "(e) merged, SAM-head everything + CLIP-head mask pooling"),
                           ("merged_everything_crops", "(f) merged, SAM-head everything + merged-model crops")):
            r = ss[key]
            lines.append(f"| {title} | {r['miou']:.1f} | {r['miou_no_background']:.1f} | "
                         f"{r['seconds_per_image']:.3f} |")
        lines += _semseg_goals(ss)
        lab = result["labelling"]
        lines += ["", "## Click / box -> label accuracy", "",
                  "| prompt | mean pooling (merged, one pass) | max pooling (merged, one pass) | "
                  "max pooling + mirrored view (one extra pass) | "
                  "region pooling (merged, one pass) | merged model on the crop | "
                  "max pooling + merged crop, each with its mirror view (one model) | zoomed mask, read on its zoom "
                  "window + mirror (one model) | the same + merged crop (one model) | crop baseline (two models) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                  *(f"| {kind} | {lab[f'mask_pooling_{kind}']:.1f} | {lab[f'max_pooling_{kind}']:.1f} | "
                    f"{lab[f'max_pooling_tta_{kind}']:.1f} | "
                    f"{lab[f'region_pooling_{kind}']:.1f} | "
                    f"{lab[f'merged_crop_{kind}']:.1f} | {lab.get(f'max_pooling_tta_crop_{kind}', float('nan')):.1f} | "
                    f"{lab.get(f'zoom_tta_{kind}', float('nan')):.1f} | "
                    f"{lab.get(f'zoom_tta_crop_{kind}', float('nan')):.1f} | "
                    f"{lab[f'crop_{kind}']:.1f} |" for kind in ("point", "box")),
                  ""]
        lines += _segment_text_table(result.get("segment_text"))  # absent from reports written before it
        if teachers:
            lines += ["## Merged model vs teachers", "", *teacher_table(result), ""]
        lines += _breakdown_table(result.get("prompt_breakdown", {}))
        lines += ["![overlays: input, ground truth, CLIP head, both heads](overlays.png)", ""]
    else:
        lines += ["```json", json.dumps(result, indent=2), "```", ""]
    return lines


def write_reports(result: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "eval.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(out / "eval.md", markdown_report(result).encode())
    return out / "eval.json", out / "eval.md"
