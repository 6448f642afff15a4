"""The README's examples run as written: its Python blocks (the Predictor tour, the scene world) and the
command-line tour, on the shipped embedded default. Examples that need downloads, real checkpoints or a
long run are named in ``NOT_RUN`` with the reason; the rest must exit 0."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import samclip
from samclip.cli import main
from samclip.data import generate_scene
from samclip.pretrained import WEIGHTS_DIR, is_registered

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.skipif(not (WEIGHTS_DIR / "tiny-synthetic" / "samclip" / "model.safetensors").exists(),
                                reason="shipped tiny-synthetic weights not present")

# command-line examples not run here, by what they start with, and why
NOT_RUN = {
    "samclip serve": "a server that runs until stopped (tests/test_serve.py)",
    "SAMCLIP_API_KEY": "a server that runs until stopped",
    "samclip download": "downloads (tests/test_hub.py, offline)",
    "samclip info sam_vit_b_01ec64.pth": "a real checkpoint file (tests/test_cli_info.py, tiny ones)",
    "samclip eval": "minutes of evaluation (tests/test_eval_harness.py)",
    "samclip export sam-pth --model runs/paper": "a real merge's output (tests/test_export_sam.py, tiny ones)",
}


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), re.S | re.M)


def _block_with(lang: str, needle: str) -> str:
    found = [b for b in _blocks(lang) if needle in b]
    assert len(found) == 1, f"expected one README {lang} block with {needle!r}, found {len(found)}"
    return found[0]


def _commands(block: str) -> list[str]:
    """Each command line of a bash block, without its trailing comment (continuation lines joined)."""
    text = block.replace("\\\n", " ")
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_python_predictor_tour_runs(monkeypatch) -> None:  # noqa: ANN001
    image = generate_scene(seed=7, size=256).image[:, :200]  # not square: sizes must follow the image
    ns: dict = {"image": image}
    exec(compile(_block_with("python", "samclip.Predictor(model)"), "README.md", "exec"), ns)  # noqa: S102
    h, w = image.shape[:2]
    assert ns["masks"].shape[-2:] == (h, w) and ns["sem"].label_map.shape == (h, w)
    assert len(ns["idx"]) == len(ns["masks"])  # the last (idx, probs): one label per mask
    np.testing.assert_allclose(np.asarray(ns["probs"]).sum(-1), 1.0, atol=1e-4)


def test_python_scene_world_example_runs() -> None:
    ns: dict = {}
    exec(compile(_block_with("python", "generate_scene("), "README.md", "exec"), ns)  # noqa: S102
    assert ns["scene"].image.shape == (256, 256, 3)


def test_loading_example_names_are_registered() -> None:
    block = _block_with("python", "samclip.load_sam(")
    names = re.findall(r'load_(sam|clip)\("([a-z0-9-]+)"\)', block)
    assert names, "no registered names found in the loading example"
    for kind, name in names:
        assert is_registered(kind, name), f"README loads {kind} {name!r}, which is not registered"
    for fn in re.findall(r"samclip\.(\w+)\(", block):
        assert callable(getattr(samclip, fn, None)), f"README calls samclip.{fn}, which does not exist"


def test_command_line_tour_runs(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    Image.fromarray(generate_scene(seed=3, size=256).image).save("scene.png")
    Path("imgs").mkdir()
    Image.fromarray(generate_scene(seed=4, size=256).image).save("imgs/a.png")
    ran, skipped = [], []
    for line in _commands(_block_with("bash", "samclip classify scene.png")):
        if any(line.startswith(prefix) for prefix in NOT_RUN):
            skipped.append(line)
            continue
        argv = shlex.split(line)
        assert argv[0] == "samclip", f"unexpected README command: {line}"
        code = main(argv[1:])
        out, err = capsys.readouterr()
        assert code == 0, f"README command failed ({code}): {line}\n{err[-2000:]}"
        ran.append(line)
    assert len(ran) >= 10, ran  # the tour is mostly runnable offline; a parsing slip must not pass quietly
    assert Path("runs/onnx/samclip_onnx.json").is_file() and list(Path("runs/semseg").glob("*.json"))
    for prefix in NOT_RUN:
        assert any(line.startswith(prefix) for line in skipped), f"NOT_RUN lists {prefix!r}, not in the README"
