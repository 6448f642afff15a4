"""``samclip eval --benchmark classify``: zero-shot classification on an image folder, one subfolder per class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import samclip
from samclip.cli import main as cli_main
from samclip.data import generate_scene, single_object_scene, split_seeds
from samclip.eval.classification import classification_benchmark, read_class_folders

CLASSES = ("circle", "star", "ring")


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 single-object test-split scenes per class, saved as PNGs under ``<class>/``, plus a stray file."""
    root = tmp_path_factory.mktemp("classes")
    counts = dict.fromkeys(CLASSES, 0)
    for seed in split_seeds("test", 400, start=123_000):
        scene = single_object_scene(int(seed), 128)
        name = scene.objects[0].category
        if name in counts and counts[name] < 4:
            (root / name).mkdir(exist_ok=True)
            Image.fromarray(scene.image).save(root / name / f"{seed}.png")
            counts[name] += 1
        if all(c == 4 for c in counts.values()):
            break
    assert all(c == 4 for c in counts.values())
    (root / "notes.txt").write_text("not a class")
    return root


@pytest.fixture(scope="module")
def shipped() -> tuple[samclip.SamClip, samclip.CLIP]:
    return samclip.load_model("tiny-synthetic"), samclip.load_clip("tiny-synthetic")


def test_classify_benchmark_reads_classes_in_folder_order(class_folder: Path, shipped) -> None:  # noqa: ANN001
    merged, teacher = shipped
    templates = ["a photo of a {}", "a {} shape"]
    res = classification_benchmark(merged, class_folder, templates=templates, clip_teacher=teacher)
    assert (res["n_images"], res["n_classes"]) == (12, 3)
    for key in ("merged", "clip_teacher"):  # both classify single objects well above chance (33%)
        assert res[key]["top1"] >= 75 and res[key]["top5"] == 100
    assert res["merged_minus_teacher_top1"] == pytest.approx(res["merged"]["top1"] - res["clip_teacher"]["top1"])
    # names given in the wrong order move the labels off their folders: accuracy collapses
    wrong = classification_benchmark(merged, class_folder, labels=["ring", "star", "circle"], templates=templates)
    assert wrong["merged"]["top1"] <= 25


def test_limit_keeps_every_class_and_bad_inputs_are_clear(class_folder: Path, shipped, tmp_path: Path) -> None:  # noqa: ANN001
    names, refs, labels = read_class_folders(class_folder, limit=5)
    assert names == sorted(CLASSES) and len(refs) == 5 and set(labels.tolist()) == {0, 1, 2}
    assert list(labels) == sorted(labels)
    merged, _ = shipped
    with pytest.raises(ValueError, match="2 class names for 3 class folders"):
        classification_benchmark(merged, class_folder, labels=["a", "b"])
    with pytest.raises(ValueError, match="needs one {}"):
        classification_benchmark(merged, class_folder, templates=["a photo"])
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "full").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "full" / "0.png")
    with pytest.raises(ValueError, match="without images: empty_class"):
        read_class_folders(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        read_class_folders(tmp_path / "missing")


def test_cli_classify_benchmark(class_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = tmp_path / "names.txt"
    names.write_text("\n".join(sorted(CLASSES)) + "\n")
    out = tmp_path / "eval"
    assert cli_main(["eval", "--benchmark", "classify", "--data", str(class_folder), "--labels-file", str(names),
                     "--limit", "6", "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["benchmark"] == "classify" and res["n_images"] == 6 and "clip_teacher" not in res
    capsys.readouterr()
    assert cli_main(["eval", "--benchmark", "classify", "--data", str(class_folder), "--labels", "a,b,c",
                     "--labels-file", str(names), "--out", str(out)]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli_main(["eval", "--benchmark", "classify", "--out", str(out)]) == 2
    assert "--data" in capsys.readouterr().err


def test_cli_eval_device(class_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--device: the model and the CLIP teacher on it (cpu here, recorded in the report); a device that is not
    there, or the scene world off the CPU, is a one-line error."""
    out = tmp_path / "eval"
    assert cli_main(["eval", "--benchmark", "classify", "--data", str(class_folder), "--limit", "6", "--device", "cpu",
                     "--clip-teacher", "tiny-synthetic", "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["machine"]["device"] == "cpu" and 0 <= res["clip_teacher"]["top1"] <= 100
    capsys.readouterr()
    assert cli_main(["eval", "--benchmark", "classify", "--data", str(class_folder), "--device", "tpu",
                     "--out", str(out)]) == 2
    assert "expected cpu or cuda" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli_main(["eval", "--benchmark", "classify", "--data", str(class_folder), "--device", "cuda",
                         "--out", str(out)]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
        assert cli_main(["eval", "--device", "cuda", "--out", str(out)]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    else:
        assert cli_main(["eval", "--device", "cuda", "--out", str(out)]) == 2
        assert "runs on the CPU" in capsys.readouterr().err


def test_class_names_and_templates_that_cannot_work_are_refused(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Two folders one text embedding apart (Cat / cat, a_b / a b), a template with another {field}, an empty
    templates file, an option the benchmark does not read: one line, exit 2."""
    from samclip.eval.classification import ZeroShotSet, class_names

    with pytest.raises(ValueError, match="the same class as"):
        class_names(["Cat", "cat"], None)
    with pytest.raises(ValueError, match="duplicate label 'a b'"):
        class_names(["a b", "a_b"], None)
    with pytest.raises(ValueError, match="duplicate label"):
        class_names(["x", "y"], ["cat", "cat"])
    root = tmp_path / "c"
    for name in ("dog", "cat"):
        (root / name).mkdir(parents=True)
        Image.fromarray(generate_scene(len(name), 32).image).save(root / name / "0.png")
    with pytest.raises(ValueError, match="exactly one"):
        ZeroShotSet(root, templates=["a {x} photo of a {}"])
    (tmp_path / "empty.txt").write_text("\n\n")
    for args, message in ((["--templates-file", str(tmp_path / "empty.txt")], "no names in it"),
                          (["--zoom", "--coarse"], "--benchmark classify does not use --coarse, --zoom")):
        assert cli_main(["eval", "--benchmark", "classify", "--data", str(root), "--out", str(tmp_path / "o"),
                         *args]) == 2
        assert message in capsys.readouterr().err


def test_16_bit_images_keep_their_values() -> None:
    """convert("RGB") saturates 16-bit pixels to white; the readers keep their high byte."""
    import io

    from samclip.merge.real_data import decode_rgb

    grey = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # 0 .. 65520
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    rgb = decode_rgb(buf.getvalue(), "grey16.png")
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], (grey >> 8).astype(np.uint8))
