"""The SAM side in segment-anything's formats. ``samclip export sam-onnx``: the tensor names and shapes that tools
built for SAM's ONNX files read, parity with transformers' ``SamModel`` (an independent SAM implementation) on a
tiny random Hugging Face SAM, masks at the original size equal to the PyTorch Predictor's on a merged model,
segment-anything's single-mask rule, the command line and its errors. ``samclip export sam-pth``: a segment-anything
checkpoint (exactly segment-anything's key set, fp32) that decodes as the model it came from."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402

import samclip  # noqa: E402
from conftest import randomize_  # noqa: E402
from samclip.cli import main as cli_main  # noqa: E402
from samclip.data import generate_scene  # noqa: E402
from samclip.export import export_sam_checkpoint, export_sam_onnx  # noqa: E402
from samclip.export.sam_onnx import DECODER_INPUTS, DECODER_NAME, DECODER_OUTPUTS, ENCODER_NAME  # noqa: E402
from samclip.inference.image_input import preprocess_shape, resize_uint8  # noqa: E402
from samclip.testing import tiny_merged_model  # noqa: E402

TOL = 1e-4
FRAME = 128  # conftest.HF_SAM_CONFIG and sam-tiny


def _session(path) -> ort.InferenceSession:  # noqa: ANN001
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _decode(dec: ort.InferenceSession, emb: np.ndarray, coords, labels, hw, mask=None) -> list[np.ndarray]:  # noqa: ANN001
    grid = emb.shape[-1]
    feed = {"image_embeddings": emb.astype(np.float32),
            "point_coords": np.asarray(coords, np.float32)[None], "point_labels": np.asarray(labels, np.float32)[None],
            "mask_input": np.zeros((1, 1, 4 * grid, 4 * grid), np.float32) if mask is None else mask,
            "has_mask_input": np.array([0.0 if mask is None else 1.0], np.float32),
            "orig_im_size": np.array(hw, np.float32)}
    return dec.run(None, feed)


@pytest.fixture(scope="module")
def hf_export(hf_sam, tmp_path_factory):  # noqa: ANN001, ANN201
    out = export_sam_onnx(hf_sam.folder, tmp_path_factory.mktemp("sam_onnx") / "export")
    return out, _session(out / ENCODER_NAME), _session(out / DECODER_NAME)


@pytest.fixture(scope="module")
def merged(tmp_path_factory):  # noqa: ANN201
    model = tiny_merged_model()
    randomize_(model.sam, 1)
    root = tmp_path_factory.mktemp("sam_onnx_merged")
    samclip.save_pretrained(model, root / "model")
    return model.eval(), root


def test_interface_is_segment_anythings(hf_export) -> None:  # noqa: ANN001
    out, enc, dec = hf_export
    assert [i.name for i in dec.get_inputs()] == list(DECODER_INPUTS) == [
        "image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
    assert [o.name for o in dec.get_outputs()] == list(DECODER_OUTPUTS) == ["masks", "iou_predictions", "low_res_masks"]
    shapes = {i.name: i.shape for i in dec.get_inputs()}
    assert shapes["point_coords"][0] == 1 and isinstance(shapes["point_coords"][1], str)  # 1 x num_points x 2
    assert shapes["orig_im_size"] == [2] and shapes["mask_input"] == [1, 1, FRAME // 4, FRAME // 4]
    assert [i.name for i in enc.get_inputs()] == ["input_image"] and enc.get_inputs()[0].shape == [1, 3, FRAME, FRAME]
    manifest = json.loads((out / "sam_onnx.json").read_text())
    assert manifest["model_type"] == "sam" and manifest["frame"] == FRAME and manifest["decoder"]["masks"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["sam_decoder.onnx", "sam_encoder.onnx", "sam_onnx.json"]


def test_parity_with_transformers_sam(hf_sam, hf_export) -> None:  # noqa: ANN001
    """Embeddings, then every mask token's low-res logits and IoU for a click, two clicks and a box, against
    transformers' SamModel (multimask: tokens 1-3; single: token 0)."""
    _, enc, dec = hf_export
    pixels = torch.randn(1, 3, FRAME, FRAME, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        emb_ref = hf_sam.model.get_image_embeddings(pixels)
    emb = enc.run(None, {"input_image": pixels.numpy()})[0]
    np.testing.assert_allclose(emb, emb_ref.numpy(), atol=TOL)
    prompts = {
        "click": ({"input_points": torch.tensor([[[[40.0, 70.0]]]]), "input_labels": torch.tensor([[[1]]])},
                  [[40.0, 70.0], [0.0, 0.0]], [1, -1]),  # no box: the (0, 0) padding point, as SAM's examples
        "two clicks": ({"input_points": torch.tensor([[[[40.0, 70.0], [90.0, 20.0]]]]),
                        "input_labels": torch.tensor([[[1, 0]]])},
                       [[40.0, 70.0], [90.0, 20.0], [0.0, 0.0]], [1, 0, -1]),
        "box": ({"input_boxes": torch.tensor([[[10.0, 20.0, 80.0, 100.0]]])}, [[10.0, 20.0], [80.0, 100.0]], [2, 3]),
    }
    for name, (hf_prompt, coords, labels) in prompts.items():
        masks, iou, low = _decode(dec, emb_ref.numpy(), coords, labels, (FRAME, FRAME))
        assert masks.shape == (1, 4, FRAME, FRAME) and low.shape == (1, 4, FRAME // 4, FRAME // 4)
        for multimask, tokens in ((True, slice(1, 4)), (False, slice(0, 1))):
            with torch.no_grad():
                ref = hf_sam.model(image_embeddings=emb_ref, multimask_output=multimask, **hf_prompt)
            k = 3 if multimask else 1
            np.testing.assert_allclose(low[0, tokens], ref.pred_masks.reshape(k, FRAME // 4, FRAME // 4).numpy(),
                                       atol=TOL, err_msg=name)
            np.testing.assert_allclose(iou[0, tokens], ref.iou_scores.reshape(k).numpy(), atol=TOL, err_msg=name)


def test_merged_model_masks_at_the_original_size_match_the_predictor(merged, tmp_path) -> None:  # noqa: ANN001
    """A merged model's SAM head, the encoder taking the resized image itself (``use_preprocess``): on a wide
    non-square image the original-size logits, low-res logits and IoUs equal the fp32 PyTorch Predictor's (whose
    coordinate conventions tests/test_predictor.py checks)."""
    model, root = merged
    out = export_sam_onnx(root / "model", tmp_path / "e", use_preprocess=True)
    assert json.loads((out / "sam_onnx.json").read_text())["model_type"] == "samclip"
    enc, dec = _session(out / ENCODER_NAME), _session(out / DECODER_NAME)
    image = generate_scene(4, 160).image[:90]  # 90 x 160
    h, w = image.shape[:2]
    resized = resize_uint8(image, preprocess_shape(h, w, FRAME))
    emb = enc.run(None, {"input_image": resized.astype(np.float32)})[0]
    pred = samclip.Predictor(model, bf16=False)
    pred.set_image(image)
    np.testing.assert_allclose(emb, pred.get_image_embedding().numpy(), atol=TOL)
    scale = FRAME / max(h, w)
    box = np.array([5, 10, 70, 80])
    masks, iou, low = _decode(dec, emb, box.reshape(2, 2) * scale, [2, 3], (h, w))
    ref_masks, ref_iou, ref_low = pred.predict(box=box, return_logits=True)
    assert masks.shape == (1, 4, h, w)
    np.testing.assert_allclose(masks[0, 1:], ref_masks, atol=TOL)
    np.testing.assert_allclose(low[0, 1:], ref_low, atol=TOL)
    np.testing.assert_allclose(iou[0, 1:], ref_iou, atol=TOL)
    single, _, _ = pred.predict(box=box, multimask_output=False, return_logits=True)
    np.testing.assert_allclose(masks[0, :1], single, atol=TOL)


def test_single_mask_output_follows_segment_anythings_rule(merged, tmp_path) -> None:  # noqa: ANN001
    """``return_single_mask``: prompts of at most two points (padding included) get the multimask output with
    the best predicted IoU, longer ones the single-mask output (token 0)."""
    model, root = merged
    every = _session(export_sam_onnx(root / "model", tmp_path / "all") / DECODER_NAME)
    one = _session(export_sam_onnx(root / "model", tmp_path / "one", return_single_mask=True) / DECODER_NAME)
    pred = samclip.Predictor(model, bf16=False)
    pred.set_image(generate_scene(6, FRAME).image)
    emb = pred.get_image_embedding().numpy()
    checked = {"multimask": 0, "single": 0}
    for coords, labels in (([[30.0, 40.0], [0.0, 0.0]], [1, -1]), ([[10.0, 10.0], [90.0, 60.0]], [2, 3]),
                           ([[30.0, 40.0], [70.0, 20.0], [0.0, 0.0]], [1, 0, -1]),
                           ([[10.0, 10.0], [90.0, 60.0], [30.0, 40.0]], [2, 3, 1])):
        masks, iou, low = _decode(every, emb, coords, labels, (100, 120))
        m1, iou1, low1 = _decode(one, emb, coords, labels, (100, 120))
        assert m1.shape == (1, 1, 100, 120) and iou1.shape == (1, 1) and low1.shape[1] == 1
        k = 0 if len(coords) > 2 else 1 + int(np.argmax(iou[0, 1:]))
        checked["single" if k == 0 else "multimask"] += 1
        np.testing.assert_allclose(m1[0, 0], masks[0, k], atol=TOL)
        np.testing.assert_allclose(iou1[0, 0], iou[0, k], atol=TOL)
    assert checked == {"multimask": 2, "single": 2}


def test_command_line_and_its_errors(merged, hf_sam, tmp_path, capsys) -> None:  # noqa: ANN001
    _, root = merged
    out = tmp_path / "cli"
    assert cli_main(["export", "sam-onnx", "--model", str(root / "model"), "--out", str(out),
                     "--return-single-mask", "--decoder-precision", "int8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["masks"] == 1 and report["decoder_precision"] == "int8" and report["model_type"] == "samclip"
    emb = _session(out / ENCODER_NAME).run(None, {"input_image": np.zeros((1, 3, FRAME, FRAME), np.float32)})[0]
    masks, iou, _ = _decode(_session(out / DECODER_NAME), emb, [[30.0, 40.0], [0.0, 0.0]], [1, -1], (FRAME, FRAME))
    assert masks.shape == (1, 1, FRAME, FRAME) and np.isfinite(masks).all()
    assert cli_main(["info", str(out)]) == 0  # described from its manifest
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "onnx export" and info["masks"] == 1 and set(info["bytes"]) == {ENCODER_NAME, DECODER_NAME}
    (out / "sam_onnx.json").write_text('{"format": "segment-anything-onnx"}')
    assert cli_main(["info", str(out)]) == 2 and "no field 'model_type'" in capsys.readouterr().err
    # a SAM checkpoint (the Hugging Face folder) with --kind sam; a merged folder read as SAM is refused clearly
    assert cli_main(["export", "sam-onnx", "--model", str(hf_sam.folder), "--kind", "sam",
                     "--out", str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    bad = {
        "which an export does not write": ["--model", str(root / "model"), "--out", str(tmp_path / "busy")],
        "not an option of the sam-onnx export": ["--model", str(root / "model"), "--out",
                                                          str(tmp_path / "x"), "--size", "64"],
        "opset": ["--model", str(root / "model"), "--out", str(tmp_path / "y"), "--opset", "3"],
    }
    for needle, args in bad.items():
        assert cli_main(["export", "sam-onnx", *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    assert cli_main(["export", "onnx", "--model", str(root / "model"), "--out", str(tmp_path / "z"),
                     "--return-single-mask"]) == 2
    assert "not an option of the onnx export" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_a_failed_export_leaves_the_earlier_one_and_the_model_as_they_were(merged, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    model, _ = merged
    out = export_sam_onnx(model, tmp_path / "e")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import samclip.export.sam_onnx as sam_onnx

    real = sam_onnx._torch_export

    def failing(module, args, path, *rest):  # noqa: ANN001, ANN202 - the encoder is written, then the decoder fails
        if path.name == DECODER_NAME:
            raise RuntimeError("exporter crashed")
        return real(module, args, path, *rest)

    monkeypatch.setattr(sam_onnx, "_torch_export", failing)
    model.train()
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_sam_onnx(model, out, return_single_mask=True)
    assert model.sam.training  # its mode restored
    model.eval()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["e"]  # no temporary folder left beside it


def test_sam_checkpoint_of_a_merged_model(merged, hf_sam, tmp_path, capsys) -> None:  # noqa: ANN001
    """``sam-pth``: a plain state dict of fp32 tensors whose key names are those of a segment-anything checkpoint
    (as a Hugging Face SAM converted to them has); read back it decodes bit for bit as the merged model does. A
    model whose architecture a reader would infer differently from the tensors is refused."""
    import dataclasses

    from samclip.models import SamClip, sam_preset
    from samclip.testing import tiny_clip

    tiny = sam_preset("sam-tiny")
    heads8 = dataclasses.replace(tiny, mask_decoder=dataclasses.replace(tiny.mask_decoder, transformer_heads=8))
    model = SamClip.from_teachers(samclip.create_sam(heads8), tiny_clip()).eval()  # SAM's 8 decoder heads
    randomize_(model.sam, 3)
    samclip.save_pretrained(model, tmp_path / "model")
    path = export_sam_checkpoint(tmp_path / "model", tmp_path / "merged_sam.pth")
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    def names(keys) -> set[str]:  # noqa: ANN001 - key names, block indices aside
        return {re.sub(r"\.\d+\.", ".N.", k) for k in keys}

    reference_keys = set(samclip.load_sam(hf_sam.folder).state_dict())  # HF keys converted to segment-anything's
    assert names(state) == names(reference_keys)
    sam = samclip.load_sam(path)
    assert sam.config == model.sam.config
    emb = torch.randn(1, 32, FRAME // 16, FRAME // 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = sam.decode(emb, torch.tensor([[[30.0, 40.0]]]), torch.tensor([[1]]))
        want = model.decode(emb, torch.tensor([[[30.0, 40.0]]]), torch.tensor([[1]]))
        assert torch.equal(sam.image_embeddings(torch.ones(1, 3, FRAME, FRAME)),
                           model.image_embeddings(torch.ones(1, 3, FRAME, FRAME)))
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    # the command line; sam-tiny's 2-head decoder (read back as 8 heads), a folder or another suffix as --out, and
    # options of other formats are refused, nothing written
    assert cli_main(["export", "sam-pth", "--model", str(hf_sam.folder), "--out", str(tmp_path / "hf.pth")]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "segment-anything"
    assert set(torch.load(tmp_path / "hf.pth", weights_only=True)) == reference_keys
    _, tiny_root = merged
    for args, needle in ((["--model", str(tiny_root / "model"), "--out", str(tmp_path / "t.pth")],
                          "mask_decoder.transformer_heads: 2 here, 8 as read from the tensors"),
                         (["--model", str(tmp_path / "model"), "--out", str(tmp_path)], "is a folder"),
                         (["--model", str(tmp_path / "model"), "--out", str(tmp_path / "x.onnx")], ".pth"),
                         (["--model", str(tmp_path / "model"), "--out", str(tmp_path / "y.pth"), "--opset", "16"],
                          "not an option of the sam-pth")):
        assert cli_main(["export", "sam-pth", *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err
    assert not (tmp_path / "t.pth").exists() and not (tmp_path / "y.pth").exists()
