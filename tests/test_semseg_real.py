"""``samclip eval --benchmark semseg``: semantic mIoU on an images folder + label-map folder, in the id
conventions of VOC (0 = background), Cityscapes / COCO-Stuff (0 = first class) and ADE20K (0 = unlabelled)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import samclip
from samclip.cli import main as cli_main
from samclip.data import SHAPES, generate_scene, split_seeds
from samclip.eval.semseg_real import folder_semseg_benchmark, read_mask_folders, to_classes

N_IMAGES = 4


@pytest.fixture(scope="module")
def scene_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """The same test scenes with their semantic maps written in each convention (images shared)."""
    root = tmp_path_factory.mktemp("semseg")
    images = root / "images"
    images.mkdir()
    sets = {z: root / f"masks_{z}" for z in ("background", "class", "ignore")}
    for folder in sets.values():
        folder.mkdir()
    for seed in split_seeds("test", N_IMAGES, start=900_000):
        scene = generate_scene(int(seed), 128)
        Image.fromarray(scene.image).save(images / f"{seed}.jpg", quality=95)
        sem = scene.semantic_mask.astype(np.uint8)  # 0 background, k = SHAPES[k - 1]
        Image.fromarray(sem).save(sets["background"] / f"{seed}.png")
        # no background class: its pixels are unlabelled
        Image.fromarray(np.where(sem == 0, 255, sem - 1).astype(np.uint8)).save(sets["class"] / f"{seed}.png")
        Image.fromarray(sem).save(sets["ignore"] / f"{seed}.png")  # ADE20K style: 0 unlabelled, k = SHAPES[k - 1]
    return {z: (images, folder) for z, folder in sets.items()}


def test_conventions_map_ids_to_the_same_classes() -> None:
    lab = np.array([[0, 1, 2, 255]], np.uint8)
    np.testing.assert_array_equal(to_classes(lab, "background", 2, 255), [[0, 1, 2, 255]])
    np.testing.assert_array_equal(to_classes(lab, "ignore", 2, 255), [[255, 0, 1, 255]])
    np.testing.assert_array_equal(to_classes(np.array([[0, 1, 255]]), "class", 2, 255), [[0, 1, 255]])
    with pytest.raises(ValueError, match=r"outside the 2 labels.*\[2\]"):
        to_classes(lab, "class", 2, 255)
    with pytest.raises(ValueError, match="zero must be one of"):
        to_classes(lab, "other", 2, 255)


def test_semseg_benchmark_agrees_across_conventions(scene_dataset) -> None:  # noqa: ANN001
    """Without a background class the ADE20K and Cityscapes conventions describe the same pixels: the same
    scores. With it (VOC), the background is a class of its own."""
    model = samclip.load_model("tiny-synthetic")
    res = {z: folder_semseg_benchmark(model, *scene_dataset[z], list(SHAPES), zero=z) for z in scene_dataset}
    assert res["class"]["miou"] == pytest.approx(res["ignore"]["miou"])
    assert res["class"]["per_class_iou"] == res["ignore"]["per_class_iou"]
    assert res["class"]["n_classes"] == 12 and res["background"]["n_classes"] == 13
    assert "miou_no_background" not in res["class"] and res["background"]["miou_no_background"] > 0
    assert all(r["n_images"] == N_IMAGES for r in res.values())
    assert res["background"]["miou"] > 25  # far above chance on scenes the shipped model knows
    coarse = folder_semseg_benchmark(model, *scene_dataset["background"], list(SHAPES), refine=False, limit=2)
    assert coarse["n_images"] == 2 and not coarse["refine"]


def test_bad_folders_are_clear_errors(scene_dataset, tmp_path: Path) -> None:  # noqa: ANN001
    images, masks = scene_dataset["background"]
    with pytest.raises(ValueError, match="not a folder"):
        next(read_mask_folders(tmp_path / "nope", masks))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG label maps"):
        next(read_mask_folders(images, tmp_path / "empty"))
    (tmp_path / "orphan").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "orphan" / "nothing_like_it.png")
    with pytest.raises(ValueError, match="no image for the label map nothing_like_it.png"):
        next(read_mask_folders(images, tmp_path / "orphan"))


def test_cli_semseg_benchmark(scene_dataset, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    images, masks = scene_dataset["ignore"]
    names = tmp_path / "names.txt"
    names.write_text("\n".join(SHAPES) + "\n")
    out = tmp_path / "eval"
    assert cli_main(["eval", "--benchmark", "semseg", "--data", str(images), "--annotations", str(masks),
                     "--labels-file", str(names), "--zero", "ignore", "--limit", "2", "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["benchmark"] == "semseg" and res["zero"] == "ignore" and res["n_images"] == 2
    capsys.readouterr()
    assert cli_main(["eval", "--benchmark", "semseg", "--data", str(images), "--out", str(out)]) == 2
    assert "--annotations" in capsys.readouterr().err
    assert cli_main(["eval", "--benchmark", "semseg", "--data", str(images), "--annotations", str(masks),
                     "--labels", "star,ring", "--zero", "ignore", "--out", str(out)]) == 2
    assert "outside the 2 labels" in capsys.readouterr().err


def test_label_maps_pair_with_the_image_in_their_own_folder(tmp_path: Path) -> None:
    """Maps pair with the image at the same relative folder (two images may share a stem); an ambiguous stem
    with no image beside the map's folder, and label maps that are not single-channel, are errors."""
    images, masks = tmp_path / "img", tmp_path / "ann"
    for sub, seed in (("x", 1), ("y", 2)):
        (images / sub).mkdir(parents=True)
        Image.fromarray(generate_scene(seed, 32).image).save(images / sub / "a.png")
    (masks / "y").mkdir(parents=True)
    Image.fromarray(generate_scene(2, 32).semantic_mask).save(masks / "y" / "a.png")
    [(stem, image, labels)] = list(read_mask_folders(images, masks))
    assert np.array_equal(image, generate_scene(2, 32).image)  # y's image, not x's
    (masks / "y" / "a.png").rename(masks / "a.png")  # a map outside both folders: which image?
    with pytest.raises(ValueError, match="several images named a"):
        list(read_mask_folders(images, masks))
    (masks / "a.png").unlink()
    (masks / "y" / "a.png").parent.mkdir(exist_ok=True)
    rgb = np.stack([generate_scene(2, 32).semantic_mask] * 3, -1)
    Image.fromarray(rgb).save(masks / "y" / "a.png")
    with pytest.raises(ValueError, match="a RGB image is not a label map"):
        list(read_mask_folders(images, masks))
