"""The evaluation harness end to end on tiny random models (mechanics, keys, file outputs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import samclip
from samclip.data import SHAPES, generate_scene
from samclip.eval import harness
from samclip.testing import tiny_clip, tiny_merged_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # noqa: ANN201, ANN001
    merged = tiny_merged_model()
    sam, clip = merged.sam, tiny_clip()
    root = tmp_path_factory.mktemp("models")
    for name, m in (("sam", sam), ("clip", clip), ("merged", merged)):
        samclip.save_pretrained(m, root / name)
    return {"root": root, "sam": sam, "clip": clip, "merged": merged}


def test_scene_benchmark_keys_and_reports(tiny, tmp_path) -> None:  # noqa: ANN001
    result = harness.scenes_benchmark(tiny["merged"], tiny["sam"], tiny["clip"], tmp_path, quick=True)
    ss = result["semantic_segmentation"]
    for key in ("clip_teacher_dense", "sam_plus_clip", "merged_clip_head", "merged_both_heads",
                "merged_both_heads_crops", "merged_both_heads_published", "merged_everything",
                "merged_everything_crops"):
        assert 0 <= ss[key]["miou"] <= 100 and ss[key]["seconds_per_image"] > 0
    for key, (first, second) in (("d_minus_b", ("merged_both_heads", "sam_plus_clip")),
                                 ("d+_minus_b", ("merged_both_heads_crops", "sam_plus_clip"))):
        boot = ss["paired_bootstrap"][key]  # the same scenes: its difference is the two rows' difference
        assert boot["difference"] == pytest.approx(ss[first]["miou"] - ss[second]["miou"])
        assert boot["ci95"][0] <= boot["difference"] <= boot["ci95"][1]
    poolings = ("mask_pooling", "max_pooling", "max_pooling_tta", "region_pooling", "merged_crop",
                "max_pooling_tta_crop", "zoom_tta", "zoom_tta_crop", "crop")
    assert set(result["labelling"]) >= {f"{m}_{k}" for m in poolings for k in ("point", "box")}
    assert {"clip_teacher", "sam_teacher", "merged", "deltas"} <= set(result)
    st = result["segment_text"]
    assert st["n_images"] == 4 and st["n_instances"] > 0
    for key in ("verified", "unverified", "everything"):
        assert set(st[key]) == {"precision", "recall", "f1", "n_predicted"}
        assert all(0 <= st[key][m] <= 100 for m in ("precision", "recall", "f1"))
    assert 0 <= result["clip_teacher"]["zero_shot_top1_flip_tta"] <= 100
    clip_size = result["merged"]["clip_size"]  # the tiny model has no TTA: its classification is one view
    assert result["merged"]["tta_views"] == [[clip_size, False]]
    assert result["merged"]["zero_shot_top1"] == result["merged"][f"zero_shot_top1@{clip_size}"]
    assert result["merged"]["label_size"] == clip_size  # label_size 0: labels read the clip_size pass
    shapes = result["prompt_breakdown"]["by_category"]
    assert sum(r["instances"] for r in shapes.values()) == result["n"]["sam_instances"]
    assert set(next(iter(shapes.values()))) == {"instances", "sam_teacher_box_miou", "merged_box_miou",
                                                "sam_teacher_point_miou", "merged_point_miou",
                                                "sam_teacher_box_miou_zoom", "merged_box_miou_zoom"}
    assert result["deltas"]["box_miou_zoom"] == pytest.approx(
        result["merged"]["box_miou_zoom"] - result["sam_teacher"]["box_miou_zoom"])
    j, md = harness.write_reports(result, tmp_path)
    assert json.loads(j.read_text())["benchmark"] == "scenes" and "(d) merged" in md.read_text()
    assert "95% interval" in md.read_text()
    assert "by shape and by visible area" in md.read_text() and "Text -> instances" in md.read_text()
    assert (tmp_path / "overlays.png").exists()
    assert result["split"] == "test" and "test split" in md.read_text()


def test_scene_benchmark_on_the_val_split(tiny, tmp_path) -> None:  # noqa: ANN001
    """split="val" (choosing settings) reads other scenes than the reported test split."""
    val = harness.scenes_benchmark(tiny["merged"], tiny["sam"], tiny["clip"], tmp_path, quick=True, split="val")
    assert val["split"] == "val" and "val split" in harness.markdown_report(val)
    assert val["n"] == {"zero_shot_images": 150, "sam_images": 20, "sam_instances": val["n"]["sam_instances"]}
    with pytest.raises(ValueError, match="split"):
        harness.scenes_benchmark(tiny["merged"], tiny["sam"], tiny["clip"], tmp_path, quick=True, split="train")


def test_coco_and_voc_benchmarks(tiny, tmp_path) -> None:  # noqa: ANN001
    from pycocotools import mask as mask_utils

    images, anns, voc = [], [], tmp_path / "voc"
    (tmp_path / "imgs").mkdir()
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    for i in range(2):
        sc = generate_scene(i, 96)
        Image.fromarray(sc.image).save(tmp_path / "imgs" / f"{i}.png")
        Image.fromarray(sc.image).save(voc / "JPEGImages" / f"{i}.png")
        Image.fromarray(sc.semantic_mask).save(voc / "SegmentationClass" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": 96, "width": 96})
        for k, (obj, m) in enumerate(zip(sc.objects, sc.instance_masks)):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            x0, y0, x1, y1 = obj.bbox_xyxy
            anns.append({"id": 100 * i + k + 1, "image_id": i, "category_id": obj.category_id, "iscrowd": 0,
                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                         "area": float(m.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0]})
    cats = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
    ann_path = tmp_path / "instances.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    r = harness.coco_box_prompt_ap(tiny["merged"], str(tmp_path / "imgs"), str(ann_path))
    assert 0 <= r["mask_ap"] <= 100 and r["n_masks"] == len(anns) and r["zoom"] is False
    z = harness.coco_box_prompt_ap(tiny["merged"], str(tmp_path / "imgs"), str(ann_path), zoom=True)
    assert 0 <= z["mask_ap"] <= 100 and z["n_masks"] == len(anns) and z["zoom"] is True
    r = harness.voc_benchmark(tiny["merged"], str(voc), list(SHAPES))
    assert r["n_images"] == 2 and 0 <= r["miou"] <= 100

    # a detector's boxes as prompts: here the ground truth's, scored, plus a low-scoring miss and a thin box
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in anns]
    dets += [{"image_id": 0, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.05},
             {"image_id": 1, "category_id": 2, "bbox": [5, 5, 0, 4], "score": 0.99}]
    det_path = tmp_path / "detections.json"
    det_path.write_text(json.dumps(dets))
    d = harness.coco_box_prompt_ap(tiny["merged"], str(tmp_path / "imgs"), str(ann_path), detections=str(det_path))
    assert d["prompts"] == "detections" and d["n_masks"] == len(anns) + 1  # the empty box is dropped
    above = harness.coco_box_prompt_ap(tiny["merged"], str(tmp_path / "imgs"), str(ann_path),
                                       detections=str(det_path), min_score=0.5)
    assert above["n_masks"] == len(anns) and above["mask_ap"] >= d["mask_ap"]  # the miss was a false positive
    for bad, msg in (({"image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}, "image 7"),
                     ({"image_id": 0, "category_id": 99, "bbox": [0, 0, 5, 5], "score": 1}, "category 99"),
                     ({"image_id": 0, "bbox": [0, 0, 5, 5], "score": 1}, "lacks")):
        det_path.write_text(json.dumps([bad]))
        with pytest.raises(ValueError, match=msg):
            harness.coco_box_prompt_ap(tiny["merged"], str(tmp_path / "imgs"), str(ann_path), detections=str(det_path))


def _coco(**ann_changes) -> dict:  # noqa: ANN003
    """A one-image, one-annotation COCO instances file (an 80 x 64 image), the annotation changed as given."""
    ann = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100.0, "bbox": [10, 10, 20, 20],
           "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}
    ann.update(ann_changes)
    return {"images": [{"id": 1, "file_name": "1.png", "height": 64, "width": 80}], "annotations": [ann],
            "categories": [{"id": 1, "name": "star"}]}


@pytest.mark.parametrize("change, message", [
    ({"segmentation": [[1, 2, 3]]}, "polygon 'segmentation'"),
    ({"segmentation": "x"}, "must be polygons"),
    ({"segmentation": None}, "got nothing"),
    ({"segmentation": {"size": [10, 10], "counts": "abc"}}, "RLE 'size' [10, 10]"),
    ({"segmentation": {"size": [64, 80], "counts": [5, 7]}}, "summing to height x width"),
    ({"segmentation": {"size": [64, 80], "counts": "garbage!!"}}, "not a valid RLE string"),
    ({"bbox": [10, 10, 20]}, "'bbox' must be"),
    ({"bbox": "abc"}, "'bbox' must be"),
    ({"bbox": [10, 10, -5, 20]}, "'bbox' must be"),
    ({"bbox": [1e9, 1e9, 20, 20]}, "outside its 80x64 image"),
    ({"category_id": 7}, "category_id 7 is not in 'categories'"),
    ({"image_id": 99}, "image_id 99 is not in 'images'"),
])
def test_coco_annotations_are_checked(tmp_path, change, message) -> None:  # noqa: ANN001
    """Every field the evaluation reads is checked before any model work, naming the file and the entry."""
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_coco(**change)))
    with pytest.raises(ValueError, match="annotations\\[0\\] \\(id 1\\)") as e:
        harness._read_coco_json(path)
    assert message in str(e.value)
    path.write_text(json.dumps(_coco()))
    harness._read_coco_json(path)  # the unchanged file passes


def test_coco_declared_size_must_match_the_image(tiny, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "imgs").mkdir()
    Image.fromarray(generate_scene(0, 96).image).save(tmp_path / "imgs" / "1.png")  # 96 x 96, declared 80 x 64
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_coco()))
    with pytest.raises(ValueError, match="is 96x96, the annotations say 80x64"):
        harness.coco_box_prompt_ap(tiny["merged"], str(tmp_path / "imgs"), str(path))


def test_voc_folder_without_images_is_an_error(tiny, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "voc" / "SegmentationClass").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images to evaluate"):
        harness.voc_benchmark(tiny["merged"], str(tmp_path / "voc"), list(SHAPES))


def test_eval_cli_errors_are_clear(tiny, tmp_path) -> None:  # noqa: ANN001
    cmd = [sys.executable, "-m", "samclip.cli", "eval", "--model", str(tiny["root"] / "merged"), "--benchmark", "voc"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "needs --data" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "samclip.cli", "eval", "--model", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "no such file" in p.stderr and "Traceback" not in p.stderr


def test_eval_cli_dtype_is_recorded(tiny, tmp_path) -> None:  # noqa: ANN001
    """``--dtype`` decides for every model call of the harness (here over the suite's SAMCLIP_BF16=false) and the
    JSON says which precision ran; a bad SAMCLIP_BF16 value is one clear error line."""
    voc = tmp_path / "voc"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    sc = generate_scene(3, 96)
    Image.fromarray(sc.image).save(voc / "JPEGImages" / "0.png")
    Image.fromarray(sc.semantic_mask).save(voc / "SegmentationClass" / "0.png")
    cmd = [sys.executable, "-m", "samclip.cli", "eval", "--model", str(tiny["root"] / "merged"), "--benchmark", "voc",
           "--data", str(voc), "--labels", ",".join(SHAPES), "--out", str(tmp_path / "ev")]
    for dtype in ("bf16", "fp32"):
        p = subprocess.run([*cmd, "--dtype", dtype], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        result = json.loads((tmp_path / "ev" / "eval.json").read_text())
        assert result["precision"] == dtype and result["n_images"] == 1 and result["machine"]["device"] == "cpu"
    env = {**os.environ, "SAMCLIP_BF16": "maybe"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2 and "SAMCLIP_BF16 must be" in p.stderr and "Traceback" not in p.stderr


def test_match_instances_is_one_to_one_above_half_iou() -> None:
    from samclip.eval.text_instances import _scores, match_instances
    from samclip.predictor import Instance

    def inst(mask: np.ndarray) -> Instance:
        return Instance(mask=mask, score=1.0, box=(0, 0, 1, 1), point=(0, 0), predicted_iou=1.0)

    a = np.zeros((10, 10), bool)
    a[:5, :5] = True  # 25 px
    b = np.zeros((10, 10), bool)
    b[5:, 5:] = True
    near_a = a.copy()
    near_a[:5, 5:7] = True  # IoU with a: 25 / 35 > 0.5
    far_a = np.zeros((10, 10), bool)
    far_a[:5, :2] = True  # IoU with a: 10 / 25 < 0.5
    assert match_instances([inst(near_a), inst(a)], [a, b]) == 1  # a is matched once only
    assert match_instances([inst(far_a), inst(b)], [a, b]) == 1
    assert match_instances([], [a]) == 0 and match_instances([inst(a)], []) == 0
    s = _scores(hits=1, n_pred=2, n_true=4)
    assert s["precision"] == 50 and s["recall"] == 25 and abs(s["f1"] - 100 / 3) < 1e-9
    assert _scores(0, 0, 0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "n_predicted": 0}


def test_report_tables_say_which_goals_are_met() -> None:
    """The markdown's goal rows follow the numbers: hand-made results on both sides of each margin."""
    from samclip.eval.merge_report import teacher_table

    def semseg(a: float, b: float, c: float, d: float) -> dict:
        keys = ("clip_teacher_dense", "sam_plus_clip", "merged_clip_head", "merged_both_heads")
        return {k: {"miou": v, "seconds_per_image": t} for k, v, t in zip(keys, (a, b, c, d), (0.01, 0.2, 0.02, 0.05))}

    rows = "\n".join(harness._semseg_goals(semseg(10.0, 40.0, 21.0, 41.0)))
    assert "| (d) >= (c) + 3 | 41.0 vs 24.0 | yes |" in rows and "| (c) >= (a) + 10 | 21.0 vs 20.0 | yes |" in rows
    assert "| (d) >= (b) | 41.0 vs 40.0, 0.25x (b)'s time | yes |" in rows
    rows = "\n".join(harness._semseg_goals(semseg(12.0, 45.0, 21.0, 23.0)))
    assert rows.count("**no**") == 3

    report = {"clip_teacher": {"zero_shot_top1": 99.0, "zero_shot_top1_flip_tta": 99.5, "size": 64},
              "sam_teacher": {"box_miou": 80.0, "point_miou": 75.0},
              "merged": {"clip_size": 128, "zero_shot_top1@128": 96.0, "zero_shot_top1": 97.6,
                         "tta_views": [[128, False], [128, True]], "box_miou": 78.4, "point_miou": 73.6},
              "deltas": {"zero_shot_top1": -1.9, "box_miou": -1.6, "point_miou": -1.4}}
    table = "\n".join(teacher_table(report))
    assert "mean of 128 px, 128 px mirrored" in table and "| 99.5 (CLIP teacher" in table
    assert "| -1.9 | yes (-2.0) |" in table and "| -1.6 | **no** (-1.5) |" in table and "| -1.4 | yes (-1.5) |" in table
    # exactly the margin, as float32 accuracies over 1000 images give it (979 vs 999 right), meets it; one image
    # fewer does not
    acc = [100 * torch.tensor([1.0] * n + [0.0] * (1000 - n)).mean().item() for n in (979, 999, 978)]
    for merged, verdict in ((acc[0], "yes"), (acc[2], "**no**")):
        report["deltas"]["zero_shot_top1"] = merged - acc[1]
        assert f"| -{(acc[1] - merged):.1f} | {verdict} (-2.0) |" in "\n".join(teacher_table(report)), merged
