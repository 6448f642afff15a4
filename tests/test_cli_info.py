"""``samclip info``: what a checkpoint holds, read without building the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import samclip
from samclip.cli import main as cli_main
from samclip.convert import to_segment_anything


def info(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict | str]:
    code = cli_main(["info", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err)


def test_info_of_the_shipped_models(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    code, d = info(capsys, "tiny-synthetic")
    assert code == 0 and d["kind"] == "samclip" and d["sam"]["preset"] == "sam-synthetic"
    model = samclip.load_model("tiny-synthetic")
    assert d["parameters"] == sum(p.numel() for p in model.state_dict().values())
    assert (d["clip_size"], d["label_size"], d["semseg_size"]) == (128, 256, 256)
    assert d["classify_views"] == [list(v) for v in model.config.classify_views()]
    monkeypatch.setenv("SAMCLIP_CACHE", str(tmp_path))  # an empty cache, no downloads
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = info(capsys, "sam-vit-b")  # registered as SAM only: read as one
    assert code == 2 and "sam_vit_b_01ec64.pth" in err and "not a registered name" not in err
    code, d = info(capsys, "tiny-synthetic", "--kind", "clip")
    assert code == 0 and d["vision"]["tower"] == "resnet" and d["tokenizer"]["vocab_size"] == 508


def test_info_reads_foreign_formats_and_refuses_what_it_cannot(capsys, hf_clip, tmp_path: Path) -> None:  # noqa: ANN001
    sam = samclip.create_sam("sam-tiny")
    torch.save(to_segment_anything(sam.state_dict()), tmp_path / "sam_tiny.pth")
    code, d = info(capsys, str(tmp_path / "sam_tiny.pth"))  # tried as a merged model first, then read as SAM
    assert code == 0 and d["kind"] == "sam" and d["format"] == "segment-anything"
    assert d["grid"] == sam.config.image_encoder.img_size // sam.config.image_encoder.patch_size
    assert d["parameters"] == sum(t.numel() for t in sam.state_dict().values())
    code, d = info(capsys, str(hf_clip.folder))
    assert code == 0 and d["kind"] == "clip" and d["format"] == "huggingface" and d["tokenizer"] is not None
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    code, err = info(capsys, str(tmp_path / "notes.txt"))
    assert code == 2 and "not a checkpoint samclip can read" in err and "as clip" in err
    code, err = info(capsys, "hf-hub:facebook/sam-vit-base")
    assert code == 2 and "--kind" in err
