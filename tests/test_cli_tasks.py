"""`samclip classify|segment|semseg|label|everything` on generated scenes with a tiny random merged model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import samclip
from samclip.cli import main
from samclip.cli_tasks import output_stems, parse_point
from samclip.data import generate_scene
from samclip.serve import rle_decode
from samclip.testing import tiny_merged_model

SIZE = 96


build_tiny_merged = tiny_merged_model


@pytest.fixture(scope="module")
def env(tmp_path_factory):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("cli_tasks")
    samclip.save_pretrained(build_tiny_merged(), root / "model")
    imgs = root / "imgs"
    imgs.mkdir()
    for seed in range(2):
        Image.fromarray(generate_scene(seed, SIZE).image).save(imgs / f"scene{seed}.png")
    Image.fromarray(generate_scene(5, 64).image[:, :48]).save(imgs / "narrow.jpg")  # another size and format
    (root / "notes.txt").write_text("not an image")
    return root


def run(env, *args: str, capsys) -> tuple[int, str, str]:  # noqa: ANN001
    code = main([*args, "--model", str(env / "model")])
    out, err = capsys.readouterr()
    return code, out, err


def load_outputs(out_dir, stem: str) -> dict:  # noqa: ANN001
    data = json.loads((out_dir / f"{stem}.json").read_text())
    with Image.open(out_dir / f"{stem}.png") as im:
        assert im.size == (data["width"], data["height"])
    assert not list(out_dir.glob(".*.tmp")), "temporary files left behind"
    return data


def check_rle(rle: dict, h: int, w: int) -> np.ndarray:
    assert isinstance(rle["counts"], str) and rle["size"] == [h, w]
    mask = rle_decode(rle)
    assert mask.shape == (h, w)
    return mask


def test_classify_glob(env, tmp_path, capsys) -> None:  # noqa: ANN001
    code, out, _ = run(env, "classify", str(env / "imgs" / "*.png"), str(env / "imgs" / "narrow.jpg"),
                       "--labels", "star, ring,heart", "--out", str(tmp_path), capsys=capsys)
    assert code == 0 and out.count("->") == 3
    for stem in ("scene0", "scene1", "narrow"):
        d = load_outputs(tmp_path, stem)
        assert d["task"] == "classify" and d["labels"] == ["star", "ring", "heart"]
        assert abs(sum(d["probs"]) - 1) < 1e-4 and d["top"] in d["labels"]
    assert load_outputs(tmp_path, "narrow")["width"] == 48
    one = load_outputs(tmp_path, "scene0")["probs"]
    code, _, _ = run(env, "classify", str(env / "imgs" / "scene0.png"), "--labels", "star, ring,heart", "--tta",
                     "--out", str(tmp_path / "tta"), capsys=capsys)  # the tiny model has no TTA: image + mirror
    assert code == 0 and load_outputs(tmp_path / "tta", "scene0")["probs"] != one
    code, _, _ = run(env, "classify", str(env / "imgs" / "scene0.png"), "--labels", "star, ring,heart",
                     "--template", "a photo of a {}.", "--template", "a {} in the wild",
                     "--out", str(tmp_path / "templates"), capsys=capsys)  # other prompts: other probabilities
    assert code == 0 and load_outputs(tmp_path / "templates", "scene0")["probs"] != one


def test_segment_points_box_text(env, tmp_path, capsys) -> None:  # noqa: ANN001
    img = str(env / "imgs" / "scene0.png")
    code, _, _ = run(env, "segment", img, "--point", "40,50", "--point", "3,3:0", "--multimask",
                     "--out", str(tmp_path), capsys=capsys)
    d = load_outputs(tmp_path, "scene0")
    assert code == 0 and len(d["masks"]) == 3 and d["points"] == [[40, 50], [3, 3]] and d["point_labels"] == [1, 0]
    for m in d["masks"]:
        assert int(check_rle(m["segmentation"], SIZE, SIZE).sum()) == m["area"]
    code, _, _ = run(env, "segment", img, "--box", "10,10,60,70", "--out", str(tmp_path), capsys=capsys)
    d = load_outputs(tmp_path, "scene0")
    assert code == 0 and len(d["masks"]) == 1 and d["box"] == [10, 10, 60, 70]
    code, _, _ = run(env, "segment", img, "--box", "10,10,24,22", "--out", str(tmp_path / "p"), capsys=capsys)
    code_z, _, _ = run(env, "segment", img, "--box", "10,10,24,22", "--zoom", "--out", str(tmp_path / "z"),
                       capsys=capsys)
    plain, zoomed = load_outputs(tmp_path / "p", "scene0"), load_outputs(tmp_path / "z", "scene0")
    assert code == code_z == 0 and zoomed["masks"][0] != plain["masks"][0]  # another pass: another mask and score
    code, _, _ = run(env, "label", img, "--point", "30,30", "--zoom", "--pooling", "zoom+crop", "--tta",
                     "--out", str(tmp_path / "lz"), capsys=capsys)
    assert code == 0 and load_outputs(tmp_path / "lz", "scene0")["points"] == [[30, 30]]
    code, _, _ = run(env, "segment", img, "--text", "star", "--labels", "ring,heart", "--out", str(tmp_path),
                     capsys=capsys)
    d = load_outputs(tmp_path, "scene0")
    assert code == 0 and d["phrase"] == "star"
    for inst in d["instances"]:
        check_rle(inst["segmentation"], SIZE, SIZE)
    code, _, _ = run(env, "segment", img, "--text", "star", "--candidates", "everything", "--out", str(tmp_path),
                     capsys=capsys)
    assert code == 0 and load_outputs(tmp_path, "scene0")["phrase"] == "star"


def test_semseg_label_everything(env, tmp_path, capsys) -> None:  # noqa: ANN001
    img = str(env / "imgs" / "scene1.png")
    code, _, _ = run(env, "semseg", img, "--labels", "star,ring", "--refine", "--out", str(tmp_path / "s"),
                     capsys=capsys)
    d = load_outputs(tmp_path / "s", "scene1")
    assert code == 0 and d["refined"] and [e["name"] for e in d["legend"]] == ["star", "ring"]
    total = d["background_area"]
    for seg in d["segments"]:
        total += int(check_rle(seg["segmentation"], SIZE, SIZE).sum())
    assert total == SIZE * SIZE

    code, out, _ = run(env, "label", img, "--point", "30,30", "--labels", "star,ring,heart", "--out",
                       str(tmp_path / "l"), capsys=capsys)
    d = load_outputs(tmp_path / "l", "scene1")
    assert code == 0 and d["label"] in ("star", "ring", "heart") and d["label"] in out
    check_rle(d["mask"]["segmentation"], SIZE, SIZE)
    code, _, _ = run(env, "label", img, "--point", "30,30", "--labels", "star,ring,heart", "--pooling", "crop",
                     "--out", str(tmp_path / "lc"), capsys=capsys)
    assert code == 0 and load_outputs(tmp_path / "lc", "scene1")["label"] in ("star", "ring", "heart")
    code, _, _ = run(env, "label", img, "--point", "30,30", "--labels", "star,ring,heart", "--pooling", "max+crop",
                     "--out", str(tmp_path / "lmc"), capsys=capsys)
    assert code == 0 and load_outputs(tmp_path / "lmc", "scene1")["label"] in ("star", "ring", "heart")
    code, _, _ = run(env, "label", img, "--point", "30,30", "--labels", "star,ring,heart", "--pooling", "max+crop",
                     "--tta", "--out", str(tmp_path / "lmt"), capsys=capsys)
    tta = load_outputs(tmp_path / "lmt", "scene1")
    assert code == 0 and tta["label"] in ("star", "ring", "heart")
    assert tta["probs"] != load_outputs(tmp_path / "lmc", "scene1")["probs"]  # the mirrored reads count
    code, _, _ = run(env, "semseg", img, "--labels", "star,ring", "--refine", "--crop-margin", "1",
                     "--out", str(tmp_path / "sc"), capsys=capsys)
    assert code == 0 and load_outputs(tmp_path / "sc", "scene1")["refined"]

    code, _, _ = run(env, "everything", img, "--labels", "star,ring", "--points-per-side", "4",
                     "--pred-iou-thresh", "0", "--stability-thresh", "0", "--out", str(tmp_path / "e"), capsys=capsys)
    d = load_outputs(tmp_path / "e", "scene1")
    assert code == 0 and d["count"] == len(d["masks"]) >= 1
    for m in d["masks"]:
        assert m["label"] in ("star", "ring") and check_rle(m["segmentation"], SIZE, SIZE).sum() == m["area"]
    code, _, _ = run(env, "everything", img, "--labels", "star,ring", "--points-per-side", "4", "--pooling", "crop",
                     "--pred-iou-thresh", "0", "--stability-thresh", "0", "--out", str(tmp_path / "ec"), capsys=capsys)
    dc = load_outputs(tmp_path / "ec", "scene1")
    assert code == 0 and [m["area"] for m in dc["masks"]] == [m["area"] for m in d["masks"]]
    assert [m["label_score"] for m in dc["masks"]] != [m["label_score"] for m in d["masks"]]  # crops, not pooling
    code, _, _ = run(env, "everything", img, "--points-per-side", "4", "--crop-layers", "1", "--pred-iou-thresh", "0",
                     "--stability-thresh", "0", "--out", str(tmp_path / "el"), capsys=capsys)
    assert code == 0 and load_outputs(tmp_path / "el", "scene1")["count"] >= 1


@pytest.mark.parametrize("args, message", [
    (["classify", "{imgs}/missing.png"], "no such file"),
    (["classify", "{root}/notes.txt"], "not an image"),
    (["classify", "{imgs}/*.gif"], "no files match"),
    (["classify", "{imgs}/scene0.png", "--labels", " , "], "--labels is empty"),
    (["semseg", "{imgs}/scene0.png", "--labels", ""], "--labels is empty"),
    (["segment", "{imgs}/scene0.png", "--point", "4;4"], "expected x,y"),
    (["segment", "{imgs}/scene0.png", "--point", "4,4:7"], "expected x,y"),
    (["segment", "{imgs}/scene0.png", "--point", "a,b"], "expected x,y"),
    (["segment", "{imgs}/scene0.png", "--box", "1,2,3"], "expected x0,y0,x1,y1"),
    (["segment", "{imgs}/scene0.png", "--box", "9,2,3,4"], "x0 <= x1"),
    (["segment", "{imgs}/scene0.png"], "at least one --point"),
    (["label", "{imgs}/scene0.png", "--point", "500,4"], "outside the 96x96 image"),
    (["segment", "{imgs}/scene0.png", "--text", "star", "--point", "1,1"], "not both"),
    (["semseg", "{imgs}/scene0.png", "--crop-margin", "0.5"], "needs refine=True"),
    (["semseg", "{imgs}/scene0.png", "--refine", "--crop-margin", "2"], "crop_margin must be in [0, 1]"),
    (["classify", "{imgs}/scene0.png", "--out", "{imgs}"], "would replace the input image"),
    (["classify", "{imgs}/scene0.png", "--out", "{root}/notes.txt"], "exists and is not a folder"),
    (["classify", "{imgs}/scene0.png", "--out", "{root}/notes.txt/sub"], "cannot create the folder"),
    (["everything", "{imgs}/scene0.png", "--max-masks", "0"], "--max-masks 0: expected 1..255"),
    (["everything", "{imgs}/scene0.png", "--points-per-side", "100000"], "expected 1..256"),
    (["everything", "{imgs}/scene0.png", "--crop-layers", "9"], "--crop-layers 9: expected 0..4"),
    (["segment", "{imgs}/scene0.png", "--box", "1,1,9,9", "--box", "2,2,8,8"], "--box given 2 times"),
    (["classify", "{imgs}/scene0.png", "--template", "a photo"], "must be a string containing '{}'"),
])
def test_bad_inputs_exit_2(env, capsys, args, message) -> None:  # noqa: ANN001
    args = [a.format(imgs=env / "imgs", root=env) for a in args]
    code, _, err = run(env, *args, capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("samclip: error:") and message in lines[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_unavailable_is_a_clear_error(env, capsys) -> None:  # noqa: ANN001
    code, _, err = run(env, "classify", str(env / "imgs" / "scene0.png"), "--device", "cuda", capsys=capsys)
    assert code == 2 and "CUDA is not available" in err


def test_subprocess_no_traceback_and_help(env) -> None:  # noqa: ANN001
    p = subprocess.run([sys.executable, "-m", "samclip.cli", "segment", str(env / "imgs" / "scene0.png"), "--point",
                        "x", "--model", str(env / "model")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = subprocess.run([sys.executable, "-m", "samclip.cli", "segment", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "examples:" in p.stdout and "--point 120,80" in p.stdout


def test_helpers() -> None:
    assert parse_point("1.5, 2:0") == (1.5, 2.0, 0) and parse_point("3,4") == (3.0, 4.0, 1)
    from pathlib import Path

    assert output_stems([Path("a/x.png"), Path("b/x.png"), Path("y.jpg")]) == ["x", "x-2", "y"]
    # a suffixed stem never takes another input's own stem
    assert output_stems([Path("a/x.png"), Path("b/x.png"), Path("x-2.png")]) == ["x", "x-3", "x-2"]


def test_outputs_are_checked_before_the_model_runs(env, tmp_path, capsys) -> None:  # noqa: ANN001
    """A folder where an output file goes, or an input that an output would replace: exit 2, nothing written,
    the input untouched."""
    (tmp_path / "half" / "scene0.png").mkdir(parents=True)
    code, _, err = run(env, "classify", str(env / "imgs" / "scene0.png"), "--out", str(tmp_path / "half"),
                       capsys=capsys)
    assert code == 2 and "is a folder, where an output file goes" in err
    assert not (tmp_path / "half" / "scene0.json").exists()
    own = tmp_path / "own"
    own.mkdir()
    image = (env / "imgs" / "scene0.png").read_bytes()
    (own / "scene0.png").write_bytes(image)
    code, _, err = run(env, "classify", str(own / "scene0.png"), "--out", str(own), capsys=capsys)
    assert code == 2 and "would replace the input image" in err
    assert (own / "scene0.png").read_bytes() == image and sorted(p.name for p in own.iterdir()) == ["scene0.png"]


@pytest.mark.parametrize("flag", ["--pred-iou-thresh", "--stability-thresh"])
@pytest.mark.parametrize("value", ["5", "-1", "nan"])
def test_everything_thresholds_are_fractions(env, capsys, flag, value) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as e:  # argparse's own error (usage + one line), before the model loads
        run(env, "everything", str(env / "imgs" / "scene0.png"), f"{flag}={value}", capsys=capsys)
    assert e.value.code == 2 and "expected a number in 0..1" in capsys.readouterr().err


def test_outputs_never_replace_files_they_did_not_write(env, tmp_path, capsys) -> None:  # noqa: ANN001
    """An existing <stem>.png / .json that is not an earlier output pair (a user's image beside its JPEG) is
    refused before any work; an earlier output pair is replaced by a rerun."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(generate_scene(3, SIZE).image).save(folder / "a.jpg")
    user_png = (env / "imgs" / "scene1.png").read_bytes()
    (folder / "a.png").write_bytes(user_png)
    code, _, err = run(env, "classify", str(folder / "a.jpg"), "--out", str(folder), capsys=capsys)
    assert code == 2 and "not an earlier output" in err
    assert (folder / "a.png").read_bytes() == user_png and not (folder / "a.json").exists()
    out = tmp_path / "out"
    for _ in range(2):  # the second run replaces the first run's pair
        code, _, err = run(env, "classify", str(folder / "a.jpg"), "--out", str(out), capsys=capsys)
        assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png"]


def test_a_corrupt_image_in_a_batch_costs_only_its_own_output(env, tmp_path, capsys) -> None:  # noqa: ANN001
    """The header reads, the pixels do not: the other images get their outputs, then one error line, exit 2."""
    data = (env / "imgs" / "scene0.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(data[: len(data) // 2])
    code, _, err = run(env, "classify", str(env / "imgs" / "scene1.png"), str(tmp_path / "broken.png"),
                       "--out", str(tmp_path / "o"), capsys=capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("samclip: error: 1 of 2 image(s) could not be")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["scene1.json", "scene1.png"]
    load_outputs(tmp_path / "o", "scene1")


def test_broken_model_folders_exit_2(env, tmp_path, capsys) -> None:  # noqa: ANN001
    """A tokenizer.json the tokenizers library cannot read, NaN or zero-std numbers in config.json: one line."""
    import shutil

    cases = {
        "tokenizer": lambda d: (d / "tokenizer.json").write_text('{"not": "a tokenizer"}'),
        "nan": lambda d: _edit_config(d, lambda c: c["sam"]["image_encoder"].update(layer_norm_eps=float("nan"))),
        "std": lambda d: _edit_config(d, lambda c: c["sam"].update(pixel_std=[0, 0, 0])),
    }
    messages = {"tokenizer": "not a tokenizer file", "nan": "expected finite numbers", "std": "expected numbers > 0"}
    for name, damage in cases.items():
        folder = tmp_path / name
        shutil.copytree(env / "model", folder)
        damage(folder)
        code = main(["classify", str(env / "imgs" / "scene0.png"), "--model", str(folder), "--out",
                     str(tmp_path / f"o_{name}")])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and messages[name] in err, (name, err)


def _edit_config(folder, change) -> None:  # noqa: ANN001
    path = folder / "config.json"
    data = json.loads(path.read_text())
    change(data["config"])
    path.write_text(json.dumps(data))


def test_pooling_choices_are_the_predictors() -> None:
    """The CLI and the HTTP schema spell out Predictor's MASK_POOLINGS (they must not import torch to parse)."""
    import typing

    from samclip.cli_tasks import POOLINGS
    from samclip.predictor import MASK_POOLINGS
    from samclip.serve.schemas import Pooling

    assert set(POOLINGS) == set(MASK_POOLINGS) == set(typing.get_args(Pooling))
