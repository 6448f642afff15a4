"""The shipped embedded-default weights: they load through the public API, fit the size budget, and the
merged model's settings are the ones its reproduction command (``make merge-default``) would write."""

from __future__ import annotations

from pathlib import Path

import pytest

import samclip
from samclip.merge.config import CONFIG_DIR, load_config
from samclip.pretrained import WEIGHTS_DIR

ROOT = WEIGHTS_DIR / "tiny-synthetic"
MB = 2**20

pytestmark = pytest.mark.skipif(not (ROOT / "samclip" / "model.safetensors").exists(),
                                reason="shipped tiny-synthetic weights not present")


def _size(folder: str) -> int:
    return sum(p.stat().st_size for p in (ROOT / folder).iterdir() if p.is_file())


def test_shipped_weights_fit_the_budget() -> None:
    assert _size("sam") + _size("clip") <= 25 * MB  # the two teachers together
    assert _size("samclip") <= 25 * MB  # the merged model


def test_shipped_models_load_and_agree_with_the_merge_config() -> None:
    sam, clip, merged = samclip.load_sam("tiny-synthetic"), samclip.load_clip("tiny-synthetic"), \
        samclip.load_model("tiny-synthetic")
    assert sam.config == merged.sam.config  # the merged SAM head has the teacher's architecture
    assert clip.config.text == merged.config.text and merged.tokenizer is not None
    cfg = load_config(CONFIG_DIR / "tiny-synthetic.toml")
    head = merged.config.head
    assert (head.depth, head.mlp_hidden, head.dense_pool, head.refine_pool) == (
        cfg.head.depth, cfg.head.mlp_hidden, cfg.head.dense_pool, cfg.head.refine_pool)
    assert merged.config.clip_size in cfg.trained_clip_sizes
    if merged.config.has_tta:  # the merge keeps the config's TTA candidate only when it is better on val
        assert (merged.config.tta_flip, merged.config.tta_sizes) == (cfg.head.tta_flip, tuple(cfg.head.tta_sizes))
    # whichever trained size val picks as clip_size, the TTA candidate has the same views (sizes x mirror):
    # with tta_sizes = [112] a pick of 112 once left 2 views instead of 4 (docs/experiments.md, session 23)
    views = {frozenset(merged.config.replace(clip_size=s, tta_flip=cfg.head.tta_flip,
                                             tta_sizes=tuple(cfg.head.tta_sizes)).classify_views())
             for s in cfg.trained_clip_sizes}
    assert len(views) == 1 and len(next(iter(views))) == 4, views


def test_paper_config_names_registered_teachers() -> None:
    """The paper's setting loads its teachers by registered names, each with the architecture it was
    published with (the DataComp ViT-L/14 is GELU, OpenAI's QuickGELU)."""
    from samclip import pretrained
    from samclip.models import clip_preset

    cfg = load_config(CONFIG_DIR / "sam-vit-b_clip-vit-l14.toml")
    assert pretrained.is_registered("sam", cfg.teachers.sam) and pretrained.is_registered("clip", cfg.teachers.clip)
    assert not cfg.teachers.clip_format_config  # read from the repository's open_clip_config.json
    assert pretrained.preset_for("clip", "clip-vit-l-14") == "clip-vit-l-14"
    assert clip_preset("clip-vit-l-14").vision.act == "quick_gelu"


def test_repo_configs_are_the_packaged_ones() -> None:
    """configs/*.toml (what users read and edit) and the packaged copies (what ``--config NAME`` loads) agree."""
    repo = Path(__file__).resolve().parents[1] / "configs"
    names = sorted(p.name for p in repo.glob("*.toml"))
    assert names == sorted(p.name for p in CONFIG_DIR.glob("*.toml")) and names
    for name in names:
        assert (repo / name).read_text() == (CONFIG_DIR / name).read_text(), name


def test_demo_quick_runs_end_to_end_and_resumes(tmp_path, capsys) -> None:  # noqa: ANN001
    """`samclip demo` (the README main command's job) on a few steps: the embedded-default merge from the
    shipped teachers, then the report; run again, it resumes the finished merge instead of redoing it."""
    import json

    from samclip.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"clip_teacher", "sam_teacher", "merged", "deltas", "merge"} <= set(report)
    assert {"semantic_segmentation", "labelling", "segment_text"} <= set(report)  # the whole evaluation too
    assert 0 <= report["merged"]["box_miou"] <= 100 and report["merge"]["wall_s"] > 0
    md = (out / "report.md").read_text()
    assert "Merge wall time" in md and "(b) SAM-teacher everything" in md and "Click / box -> label" in md
    assert md.count("| box-prompt mIoU |") == 1 and (out / "overlays.png").exists()  # the teacher table once
    merged = samclip.load_model(out / "merge" / "model")
    assert merged.config.clip_size > 0
    weights = (out / "merge" / "model" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert "(resuming)" in capsys.readouterr().out
    assert (out / "merge" / "model" / "model.safetensors").read_bytes() == weights


def test_zoomed_click_is_decoded_with_the_box_of_its_ordinary_mask() -> None:
    """A click on a small scene object: predict(zoom=True) is the click plus the box of the ordinary pass's best
    mask (by predicted IoU), decoded on that box's zoom window, and it differs from the ordinary pass."""
    import numpy as np
    import torch

    from samclip.data import generate_scene
    from samclip.predictor import Predictor
    from samclip.prompts import masks_to_boxes

    pred = Predictor(samclip.load_model("tiny-synthetic"), bf16=False)
    scene = generate_scene(3, 256)
    pred.set_image(scene.image)
    small = min((m for m in scene.instance_masks if m.any()), key=lambda m: m.sum())
    ys, xs = np.nonzero(small)
    kwargs = {"point_coords": [[xs[len(xs) // 2], ys[len(ys) // 2]]], "point_labels": [1]}
    masks, scores, _ = pred.predict(**kwargs)
    box = masks_to_boxes(torch.from_numpy(masks[int(np.argmax(scores))])[None])[0].numpy()
    assert 3 * max(box[2] - box[0], box[3] - box[1]) < 256  # its window magnifies
    zoomed = pred.predict(**kwargs, zoom=True)
    for a, b in zip(zoomed, pred.predict(**kwargs, box=box, zoom=True), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(zoomed[0], masks)
