"""scripts/predictor_devices.py, the GPU path's correctness check, run CPU against CPU: it must agree fully with
itself, and it must fail when one task's output moves."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "predictor_devices.py"


def _module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("predictor_devices", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_predictor_device_check_agrees_with_itself_and_catches_a_changed_task() -> None:
    mod = _module()
    images = mod._images(2)
    assert [im.shape for im in images] == [(200, 300, 3), (300, 200, 3)]
    ref = mod.run_tasks("cpu", images)
    agreement = mod.compare(ref, mod.run_tasks("cpu", images))
    assert mod.failures(agreement) == [] and agreement["box_masks_iou_min"] == 1.0
    moved = copy.deepcopy(ref)
    moved[1]["refined"] = np.zeros_like(moved[1]["refined"])  # a semantic map that lost its objects
    moved[0]["classify"] = moved[0]["classify"][::-1].copy()
    bad = mod.failures(mod.compare(ref, moved))
    assert any(b.startswith("refined_pixel_agreement_min") for b in bad), bad
    assert any(b.startswith("classify_max_diff") for b in bad), bad
