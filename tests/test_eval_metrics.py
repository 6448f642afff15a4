"""Evaluation metrics and baselines on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import samclip
from samclip.eval.baselines import crop_embeddings, maskclip_patch_embeddings
from samclip.eval.semseg import ConfusionMatrix, miou_of, paired_bootstrap, read_voc_folder


def test_confusion_matrix_miou_by_hand() -> None:
    cm = ConfusionMatrix(3)
    target = np.array([[0, 0, 1, 1], [0, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 0]])
    cm.update(pred, target)
    # class 0: tp 2, fp 1 (pred 0 where gt 2), fn 1 -> 2/4; class 1: tp 2, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 1/2
    iou = cm.iou()
    assert np.allclose(iou, [2 / 4, 2 / 3, 1 / 2])
    s = cm.summary(["bg", "a", "b"])
    assert s["miou"] == pytest.approx(100 * np.mean([0.5, 2 / 3, 0.5]))
    assert s["miou_no_background"] == pytest.approx(100 * np.mean([2 / 3, 0.5]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(pred[:1], target)


def _per_image(rng: np.random.Generator, n: int, accuracy: float, k: int = 4) -> np.ndarray:
    """n confusion matrices of 8x8 label maps whose prediction is right with probability ``accuracy``."""
    out = []
    for _ in range(n):
        cm = ConfusionMatrix(k)
        gt = rng.integers(0, k, (8, 8))
        cm.update(np.where(rng.random((8, 8)) < accuracy, gt, rng.integers(0, k, (8, 8))), gt)
        out.append(cm.matrix)
    return np.stack(out)


def test_miou_of_matches_the_confusion_matrix() -> None:
    mats = _per_image(np.random.default_rng(0), 12, 0.6)
    cm = ConfusionMatrix(4)
    cm.matrix = mats.sum(0)
    assert miou_of(mats.sum(0)) == pytest.approx(cm.summary()["miou"])
    assert miou_of(mats).shape == (12,)


def test_paired_bootstrap_of_a_difference() -> None:
    rng = np.random.default_rng(1)
    good, bad = _per_image(rng, 40, 0.9), _per_image(rng, 40, 0.4)
    same = paired_bootstrap(good, good)
    assert same["difference"] == 0 and same["ci95"] == [0, 0] and same["share_first_ge_second"] == 1
    r = paired_bootstrap(good, bad)
    assert r["difference"] == pytest.approx(miou_of(good.sum(0)) - miou_of(bad.sum(0)))
    assert 0 < r["ci95"][0] < r["difference"] < r["ci95"][1] and r["share_first_ge_second"] == 1
    rng = np.random.default_rng(100)  # two draws of one method: a difference within the scenes' spread
    close = paired_bootstrap(_per_image(rng, 40, 0.6), _per_image(rng, 40, 0.6))
    assert close["ci95"][0] < 0 < close["ci95"][1] and 0 < close["share_first_ge_second"] < 1
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap(good, bad[:5])


def test_voc_reader(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "JPEGImages" / "a.jpg")
    lab = Image.fromarray(np.array([[0, 1, 1, 255, 0]] * 4, np.uint8), mode="L").convert("P")
    lab.save(tmp_path / "SegmentationClass" / "a.png")
    rows = list(read_voc_folder(tmp_path))
    assert len(rows) == 1 and rows[0][1].shape == (4, 5, 3) and rows[0][2][0].tolist() == [0, 1, 1, 255, 0]
    with pytest.raises(ValueError, match="VOC layout"):
        list(read_voc_folder(tmp_path / "JPEGImages"))


def test_mask_crops_keep_pad_times_the_box_of_grey_context() -> None:
    """A 20x20 square mask: its crop is a square of (1 + pad) x 20 px centred on it, grey outside the mask
    and beyond the image edge; the default pad is CROP_PAD."""
    from samclip.inference import CROP_PAD, mask_crops

    img = np.full((200, 300, 3), 200, np.uint8)
    masks = np.zeros((2, 200, 300), bool)
    masks[0, 90:110, 140:160] = True  # centre
    masks[1, 0:20, 0:20] = True  # corner: half the context lies beyond the image edge
    for pad in (0.1, 1.0, CROP_PAD):
        crops = mask_crops(img, masks, 88, pad)
        side = int(2 * 20 * (1 + pad) / 2) + 2  # the canvas before resizing
        for crop in crops:
            cols = np.nonzero((crop > 164).all(-1).any(0))[0]  # more object than grey
            assert abs(len(cols) - 88 * 20 / side) <= 2, (pad, len(cols))
            assert (crop[0, 0] == 128).all() and (crop[44, 44] == 200).all()
    assert np.array_equal(mask_crops(img, masks, 88), mask_crops(img, masks, 88, CROP_PAD))


def test_mask_crops_of_a_very_long_object_stay_small_and_alike(monkeypatch) -> None:  # noqa: ANN001
    """A mask thousands of pixels long: the crop is resized from a block-averaged canvas of at most MAX_CANVAS a
    side (it was a float canvas of the full side squared: 36 GB for a 25000 px object), and looks as the exact
    crop does."""
    import samclip.inference.crops as crops

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 3000, 3), dtype=np.uint8)
    masks = np.zeros((1, 60, 3000), bool)
    masks[0, 10:50, 5:2990] = True
    sides = []
    real = crops.F.interpolate
    monkeypatch.setattr(crops.F, "interpolate", lambda x, **kw: sides.append(x.shape[-1]) or real(x, **kw))
    reduced = crops.mask_crops(img, masks, 96)
    assert sides and max(sides) <= crops.MAX_CANVAS
    monkeypatch.setattr(crops, "MAX_CANVAS", 10**6)  # the exact path, for comparison
    exact = crops.mask_crops(img, masks, 96)
    assert sides[-1] == int(2985 * (1 + crops.CROP_PAD)) + 2  # the full canvas there
    assert np.abs(reduced.astype(int) - exact).max() <= 2


def test_maskclip_and_crop_baselines_shapes() -> None:
    clip = samclip.create_clip("clip-tiny").eval()
    img = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    dense = maskclip_patch_embeddings(clip, img)
    assert dense.shape == (4, 4, 32) and torch.allclose(dense.norm(dim=-1), torch.ones(4, 4), atol=1e-5)
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 5:20, 5:30] = True
    emb = crop_embeddings(clip, img, masks)
    assert emb.shape == (2, 32)


def test_prompt_miou_breakdown_partitions_the_instances() -> None:
    """Per-category and per-area groups of a real (tiny, random) SAM: every instance in exactly one group,
    the groups' instance-weighted means give the overall mIoU, and the categories are the bank's."""
    from samclip.data.banks import build_bank
    from samclip.eval.prompt_seg import AREA_BUCKETS, prompt_miou

    torch.manual_seed(0)
    sam = samclip.create_sam("sam-tiny").eval()
    bank = build_bank("val", 6, sam.img_size, workers=1)
    plain = prompt_miou(sam, bank, bf16=False)
    out = prompt_miou(sam, bank, bf16=False, breakdown=True, zoom=True)
    assert "by_category" not in plain and "box_miou_zoom" not in plain and out["box_miou"] == plain["box_miou"]
    assert 0 <= out["point_miou_first_zoom"] <= 100 and "point_miou_first_zoom" not in plain
    from collections import Counter

    present = Counter(o[0] for i, objs in enumerate(bank.objects) for k, o in enumerate(objs)
                      if (bank.instance_maps[i] == k + 1).any())
    assert {c: r["instances"] for c, r in out["by_category"].items()} == dict(present)
    assert set(out["by_area"]) <= {name for name, _ in AREA_BUCKETS}
    for group in ("by_category", "by_area"):
        rows = out[group].values()
        assert sum(r["instances"] for r in rows) == out["instances"]
        for metric in ("box_miou", "point_miou", "box_miou_zoom"):
            mean = sum(r[metric] * r["instances"] for r in rows) / out["instances"]
            assert mean == pytest.approx(out[metric], abs=1e-4)
