"""ONNX export + onnxruntime backend on a tiny random merged model: graph parity with PyTorch (fp32),
Predictor parity (backend="onnx" vs torch), the CLI and clear errors."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import samclip  # noqa: E402
from conftest import randomize_  # noqa: E402
from samclip.cli import main as cli_main  # noqa: E402
from samclip.data import SHAPES, generate_scene  # noqa: E402
from samclip.export import OnnxBackend, export_onnx  # noqa: E402
from samclip.export.onnx_export import (  # noqa: E402
    CACHED_DECODER_NAMES,
    CLIP_HEAD_NAME,
    DECODER_CACHE_NAME,
    DECODER_NAMES,
    IMAGE_ENCODER_NAME,
    MANIFEST_NAME,
    TEXT_ENCODER_NAME,
    TOKENIZER_NAME,
)
from samclip.models import SamClip  # noqa: E402
from samclip.testing import tiny_merged_model  # noqa: E402

TOL = 1e-3
LABELS = list(SHAPES[:3])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # noqa: ANN001, ANN201
    model = tiny_merged_model(dense_pool=3)  # the per-patch window max-pool is part of the graph
    randomize_(model.sam, 1)
    randomize_(model.clip_head, 2)
    model.eval()
    root = tmp_path_factory.mktemp("onnx")
    samclip.save_pretrained(model, root / "model")
    out = export_onnx(root / "model", root / "export")
    return {"model": model, "root": root, "dir": out, "backend": OnnxBackend(out, threads=1)}


def _image(seed: int = 3, hw: tuple[int, int] = (96, 120)) -> np.ndarray:
    return generate_scene(seed, max(hw)).image[: hw[0], : hw[1]]


# ------------------------------------------------------------------------------------- the export
def test_export_writes_graphs_and_manifest(tiny) -> None:  # noqa: ANN001
    out = tiny["dir"]
    names = {p.name for p in out.iterdir()}
    assert names == {IMAGE_ENCODER_NAME, CLIP_HEAD_NAME, *DECODER_NAMES.values(), MANIFEST_NAME, TEXT_ENCODER_NAME,
                     TOKENIZER_NAME, DECODER_CACHE_NAME, *CACHED_DECODER_NAMES.values()}
    assert not [p for p in tiny["root"].iterdir() if p.name.startswith(".")]  # no temporary folder left
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert (m["frame"], m["grid"], m["patch_size"], m["low_res"]) == (128, 8, 16, 32)
    assert m["pixel_mean"] == list(tiny["model"].sam.config.pixel_mean)
    assert m["logit_scale"] == pytest.approx(float(tiny["model"].logit_scale.detach()))
    assert m["source"] == str((tiny["root"] / "model").resolve())
    assert set(m["exporters"].values()) <= {"torchscript", "dynamo"}


def test_image_graph_matches_torch(tiny) -> None:  # noqa: ANN001
    model, backend = tiny["model"], tiny["backend"]
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    for gh, gw in ((8, 8), (6, 8), (8, 3)):
        emb, patches, pooled = backend.encode(x.numpy(), (gh, gw))
        with torch.no_grad():
            feats = model.features(x)
            ref_emb = model.sam_embeddings(feats)
            ref_patches = model.patch_embeddings(feats)
            head = model.clip_tokens(feats)[:, :gh, :gw]
            ref_pooled = torch.nn.functional.normalize(model.clip_head.pooled(head), dim=-1)
        assert emb.shape == (1, 32, 8, 8) and patches.shape == (1, 8, 8, 32) and pooled.shape == (1, 32)
        assert np.abs(emb - ref_emb.numpy()).max() <= TOL
        assert np.abs(patches - ref_patches.numpy()).max() <= TOL
        assert np.abs(pooled - ref_pooled.numpy()).max() <= TOL
    emb, tokens = backend.encode_image(x.numpy())  # the backbone pass alone, then the head on its tokens
    clip = backend.encode_clip(tokens, (8, 8))
    with torch.no_grad():
        feats = model.features(x)
        ref_head, ref_patches = model.clip_tokens(feats), model.patch_embeddings(feats)
    assert np.abs(tokens - feats.tokens.numpy()).max() <= TOL
    assert np.abs(clip["head_tokens"] - ref_head.numpy()).max() <= TOL
    assert np.abs(clip["patch_embeddings"] - ref_patches.numpy()).max() <= TOL


def test_backend_preprocess_matches_the_predictor(tiny) -> None:  # noqa: ANN001
    backend, image = tiny["backend"], _image()
    pixels, hw = backend.preprocess(image)
    state = samclip.Predictor(tiny["model"], bf16=False).set_image(image)
    assert hw == state.input_size == (102, 128)
    from samclip.inference.image_input import resize_uint8

    ref = tiny["model"].preprocess(torch.tensor(resize_uint8(image, hw)).permute(2, 0, 1)[None].float(), 128)
    assert np.abs(pixels - ref.numpy()).max() <= 1e-4
    assert backend.valid_grid(hw) == (7, 8)


PROMPTS = {
    "1 point": ([[[40.0, 30.0]]], [[1]], None),
    "3 points, one negative": ([[[40.0, 30.0], [90.5, 70.0], [10.0, 100.0]]], [[1, 0, 1]], None),
    "box": (None, None, [[20.0, 15.0, 100.0, 80.0]]),
    "box + point": ([[[60.0, 50.0]]], [[0]], [[20.0, 15.0, 100.0, 80.0]]),
    "batch of 3, padded": ([[[40.0, 30.0], [0.0, 0.0]], [[5.0, 6.0], [70, 80]], [[127, 127], [64, 64]]],
                           [[1, -1], [1, 0], [1, 1]], None),
    "batch of 5 (the export traced 2)": ([[[8.0 * i + 3, 100.0 - 9 * i]] for i in range(5)], [[1]] * 5, None),
    "mask only / no prompt": (None, None, None),
}


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("name", list(PROMPTS))
def test_decoder_matches_torch(tiny, name, with_mask) -> None:  # noqa: ANN001
    model, backend = tiny["model"], tiny["backend"]
    with torch.no_grad():
        emb = model.sam_embeddings(model.features(torch.randn(1, 3, 128, 128)))
    pc, pl, box = PROMPTS[name]
    b = len(pc) if pc is not None else len(box) if box is not None else 1
    mask = torch.randn(b, 1, 32, 32) * 3 if with_mask else None
    t = {"pc": None if pc is None else torch.tensor(pc, dtype=torch.float32),
         "pl": None if pl is None else torch.tensor(pl), "box": None if box is None else torch.tensor(box)}
    for multimask in (True, False):
        with torch.no_grad():
            ref_low, ref_iou = model.decode(emb, t["pc"], t["pl"], t["box"], mask, multimask)
        cache = backend.image_cache(emb.numpy())  # the cached decoders serve prompts without a mask input
        for image_cache in (None, cache):
            low, iou = backend.decode(emb.numpy(), pc, pl, box, None if mask is None else mask.numpy(), multimask,
                                      image_cache=image_cache)
            k = 3 if multimask else 1
            assert low.shape == (b, k, 32, 32) and iou.shape == (b, k)
            assert np.abs(low - ref_low.numpy()).max() <= TOL, name
            assert np.abs(iou - ref_iou.numpy()).max() <= TOL, name


# ----------------------------------------------------------------------------- predictor parity
def test_predictor_onnx_matches_torch(tiny) -> None:  # noqa: ANN001
    model = tiny["model"]
    ref = samclip.Predictor(model, bf16=False)
    onx = samclip.Predictor(model, bf16=False, backend="onnx", onnx_dir=tiny["dir"])
    image = _image()
    for p in (ref, onx):
        p.set_image(image)
    # set_image runs the backbone graph only; the CLIP-head graph runs when a CLIP task first reads the image
    assert onx.state.tokens is not None and onx.state.pooled is None and onx.state.head_tokens is None
    for kwargs in ({"point_coords": [[50, 40]], "point_labels": [1]},
                   {"box": [10, 12, 90, 80], "multimask_output": False},
                   {"point_coords": [[50, 40], [100, 20]], "point_labels": [1, 0], "box": [10, 12, 110, 90]}):
        m_ref, s_ref, low_ref = ref.predict(**kwargs)
        m_onx, s_onx, low_onx = onx.predict(**kwargs)
        assert m_onx.shape == m_ref.shape == (len(s_ref), 96, 120)
        assert (m_onx == m_ref).mean() >= 0.99
        assert np.abs(s_onx - s_ref).max() <= TOL and np.abs(low_onx - low_ref).max() <= TOL
        m2_ref = ref.predict(**kwargs, mask_input=low_ref[:1])[0]
        m2_onx = onx.predict(**kwargs, mask_input=low_onx[:1])[0]
        assert (m2_onx == m2_ref).mean() >= 0.99
    assert np.abs(onx.classify(LABELS) - ref.classify(LABELS)).max() <= TOL
    assert onx.state.head_tokens is not None and onx.state.pooled is not None  # the CLIP-head graph ran
    for relabel in (False, True):
        for refine in (False, True):
            a = ref.semantic_segment(LABELS, refine=refine, relabel=relabel)
            b = onx.semantic_segment(LABELS, refine=refine, relabel=relabel)
            assert (a.label_map == b.label_map).mean() >= 0.99
    np.testing.assert_array_equal(onx.semantic_segment(LABELS, refine=True).label_map, b.label_map)  # relabels
    masks = np.zeros((2, 96, 120), bool)
    masks[0, 10:50, 20:70] = True
    masks[1, 40:90, 60:115] = True
    for kwargs in ({"pooling": "max"}, {"pooling": "max", "tta": True}, {"pooling": "mean", "tta": True}):
        e_ref, _ = ref.mask_embeddings(masks, **kwargs)
        e_onx, _ = onx.mask_embeddings(masks, **kwargs)
        assert (e_onx - e_ref).abs().max() <= TOL
    others = [LABELS[0], LABELS[2]]  # LABELS[1] has a verified instance in this image (tiny random model)
    inst = onx.segment_text(LABELS[1], vocabulary=others, threshold=0.0, tta=True)
    inst_ref = ref.segment_text(LABELS[1], vocabulary=others, threshold=0.0, tta=True)
    assert len(inst_ref) >= 1 and [round(i.score, 3) for i in inst] == [round(i.score, 3) for i in inst_ref]
    with pytest.raises(ValueError, match="region"):
        onx.mask_embeddings(masks, pooling="region")
    with pytest.raises(ValueError, match="crop_margin"):
        onx.semantic_segment(LABELS, refine=True, crop_margin=0.5)


def test_predictor_on_a_version_1_export_falls_back_to_mean_pooling(tiny, monkeypatch) -> None:  # noqa: ANN001
    """An export whose image graph has no head_tokens output (format version 1): mean pooling, the published
    refinement and the per-patch map by default; max pooling is a clear error."""
    onx = samclip.Predictor(tiny["model"], bf16=False, backend="onnx", onnx_dir=tiny["dir"])
    engine = onx._onnx
    full = engine.encode_outputs

    def without_tokens(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return {k: v for k, v in full(*args, **kwargs).items() if k != "head_tokens"}

    monkeypatch.setattr(engine, "has_head_tokens", False)
    monkeypatch.setattr(engine, "encode_outputs", without_tokens)
    onx.set_image(_image())
    assert onx.state.head_tokens is None
    masks = np.zeros((1, 96, 120), bool)
    masks[0, 10:50, 20:70] = True
    e_auto, _ = onx.mask_embeddings(masks)
    e_mean, _ = onx.mask_embeddings(masks, pooling="mean")
    assert torch.equal(e_auto, e_mean)
    with pytest.raises(ValueError, match="re-export"):
        onx.mask_embeddings(masks, pooling="max")
    published = onx.semantic_segment(LABELS, refine=True, relabel=False)
    np.testing.assert_array_equal(onx.semantic_segment(LABELS, refine=True).label_map, published.label_map)


def test_export_at_another_frame_size(tiny, tmp_path) -> None:  # noqa: ANN001
    out = export_onnx(tiny["model"], tmp_path / "s96", size=96)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["grid"] == 6 and manifest["extra_frames"] == {"128": "image_encoder_128.onnx"}  # clip_size
    ref = samclip.Predictor(tiny["model"], bf16=False)
    onx = samclip.Predictor(tiny["model"], bf16=False, backend="onnx", onnx_dir=out)
    ref.set_image(_image(), size=96)
    onx.set_image(_image())  # the exported frame is the default
    assert onx.state.frame == 96 and onx.state.grid == 6
    kwargs = {"point_coords": [[50, 40], [10, 70]], "point_labels": [1, 0], "box": [5, 5, 100, 90]}
    (m_ref, s_ref, _), (m_onx, s_onx, _) = ref.predict(**kwargs), onx.predict(**kwargs)
    assert (m_ref == m_onx).mean() >= 0.99 and np.abs(s_ref - s_onx).max() <= TOL
    # both classify at the model's clip_size (128: an image graph of the export) unless told otherwise
    assert np.abs(onx.classify(LABELS) - ref.classify(LABELS)).max() <= TOL
    assert np.abs(onx.classify(LABELS, size=96) - ref.classify(LABELS, size=96)).max() <= TOL
    with pytest.raises(ValueError, match="frames"):
        onx.classify(LABELS, size=64)
    with pytest.raises(ValueError, match="export's frame"):
        onx.set_image(_image(), size=128)


def test_export_holds_the_clip_tasks_frames_and_the_predictor_reads_them(tiny, tmp_path) -> None:  # noqa: ANN001
    """A model whose classification reads 64 px with a 48 px view, each mirrored: the export writes image graphs
    at 48 and 64 px beside its 128 px frame, and the ONNX predictor's TTA classification matches PyTorch's; with
    --no-clip-frames it falls back to the one frame."""
    import copy

    model = copy.deepcopy(tiny["model"])
    model.config = model.config.replace(clip_size=64, tta_sizes=(48,), tta_flip=True)
    out = export_onnx(model, tmp_path / "tta")
    assert json.loads((out / MANIFEST_NAME).read_text())["extra_frames"] == {
        "48": "image_encoder_48.onnx", "64": "image_encoder_64.onnx"}
    ref = samclip.Predictor(model, bf16=False)
    onx = samclip.Predictor(model, bf16=False, backend="onnx", onnx_dir=out)
    for p in (ref, onx):
        p.set_image(_image())
    assert np.abs(onx.classify(LABELS) - ref.classify(LABELS)).max() <= TOL  # 4 views each
    assert np.abs(onx.classify(LABELS, tta=False) - ref.classify(LABELS, tta=False)).max() <= TOL
    assert {k[0] for k in onx.state.other_sizes} == {48, 64}
    single = export_onnx(model, tmp_path / "one", clip_frames=False)
    assert json.loads((single / MANIFEST_NAME).read_text())["extra_frames"] == {}
    one = samclip.Predictor(model, bf16=False, backend="onnx", onnx_dir=single)
    one.set_image(_image())
    assert np.abs(one.classify(LABELS) - ref.classify(LABELS, size=128, tta=False)).max() <= TOL  # its frame
    with pytest.raises(ValueError, match="frames"):
        one.classify(LABELS, tta=True)


def test_from_onnx_uses_the_recorded_model(tiny) -> None:  # noqa: ANN001
    p = samclip.Predictor.from_onnx(tiny["dir"], bf16=False)
    assert p.backend == "onnx"
    p.set_image(_image(5))
    assert p.classify(LABELS).shape == (3,)


# ----------------------------------------------------------------------------------------- errors
def test_export_missing_model_is_a_clear_error(tiny, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        export_onnx(tmp_path / "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        export_onnx(tiny["model"], tmp_path / "out", size=100)
    with pytest.raises(TypeError, match="merged SamClip"):
        export_onnx(tiny["model"].sam, tmp_path / "out")
    assert not list(tmp_path.iterdir())
    for opset in (13, 999):
        with pytest.raises(ValueError, match="opset must be an integer in 14.."):
            export_onnx(tiny["model"], tmp_path / "out", opset=opset)


def test_export_never_replaces_a_folder_that_is_not_an_export(tiny, tmp_path) -> None:  # noqa: ANN001
    """A folder holding other files is refused (replacing it would delete them), before any model work."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds notes.txt, which an export does not write"):
        export_onnx(tiny["model"], mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (mine / "samclip_onnx.json").write_text("{}")  # an earlier export with a user's file beside it: refused too
    with pytest.raises(FileExistsError, match="holds notes.txt"):
        export_onnx(tiny["model"], mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "samclip_onnx.json"]


@pytest.mark.parametrize("change, message", [
    ({"frame": "abc"}, "frame must be a positive integer"),
    ({"frame": [128]}, "frame must be a positive integer"),
    ({"grid": 4}, "is not grid 4 x patch_size"),
    ({"patch_size": 0}, "patch_size must be a positive integer"),
    ({"logit_scale": None}, "logit_scale must be a finite number"),
    ({"pixel_mean": [1, 2]}, "pixel_mean must be 3 finite numbers"),
    ({"pixel_std": [1, 0, 1]}, "pixel_std must be 3 finite numbers > 0"),
    ({"config": None}, "config must be an object"),
    ({"graphs": "x"}, "graphs must map each frame"),
    ({"graphs": {"96": ["image_encoder.onnx"]}}, "must be [image graph, CLIP-head graph]"),
    ({"graphs": {"96": ["../export/image_encoder.onnx", "clip_head.onnx"]}}, "must name a file inside the export"),
    ({"cached_decoder": "yes"}, "cached_decoder must be an object or null"),
])
def test_manifest_values_are_checked(tiny, tmp_path, change, message) -> None:  # noqa: ANN001
    """A manifest edited by hand: ValueError naming the field (not a TypeError / KeyError from the backend)."""
    folder = tmp_path / "export"
    shutil.copytree(tiny["dir"], folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    if "graphs" in change and isinstance(change["graphs"], dict):
        change = {"graphs": {str(manifest["frame"]): next(iter(change["graphs"].values()))}}
    manifest.update(change)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=re.escape(message)):
        OnnxBackend(folder)


def test_graph_files_swapped_within_an_export_are_refused(tiny, tmp_path) -> None:  # noqa: ANN001
    """The multimask and single-mask decoders swapped answered with the wrong number of masks; image graphs of two
    frames swapped failed in onnxruntime at the first image; a missing lazy graph failed at the first CLIP task."""
    import copy

    model = copy.deepcopy(tiny["model"])
    model.config = model.config.replace(clip_size=64)  # classification reads a 64 px pass: a second frame
    export = export_onnx(model, tmp_path / "two-frames")
    names = json.loads((export / MANIFEST_NAME).read_text())
    frame = names["frame"]
    [extra] = [f for f in names["graphs"] if int(f) != frame]
    pairs = [("prompt_decoder_cached.onnx", "prompt_decoder_cached_single.onnx"),
             ("prompt_decoder.onnx", "prompt_decoder_single.onnx"),
             (names["graphs"][str(frame)][0], names["graphs"][extra][0]),
             (names["graphs"][str(frame)][1], names["graphs"][extra][1])]
    for a, b in pairs:
        folder = tmp_path / f"swap-{a}"
        shutil.copytree(export, folder)
        (folder / a).rename(folder / "tmp.onnx")
        (folder / b).rename(folder / a)
        (folder / "tmp.onnx").rename(folder / b)
        with pytest.raises(ValueError, match="the export's files were mixed up"):
            OnnxBackend(folder).open_graphs()
    folder = tmp_path / "lazy"
    shutil.copytree(export, folder)
    (folder / names["graphs"][extra][1]).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        OnnxBackend(folder).open_graphs()
    OnnxBackend(export).open_graphs()  # the export as written passes


def test_backend_errors_are_clear(tiny, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(FileNotFoundError, match=MANIFEST_NAME):
        OnnxBackend(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        OnnxBackend(tmp_path / "missing")
    (tmp_path / MANIFEST_NAME).write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a samclip ONNX manifest"):
        OnnxBackend(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        samclip.Predictor(tiny["model"], backend="onnx", onnx_dir=tmp_path / "missing")
    with pytest.raises(TypeError, match="onnx_dir must be a folder"):
        samclip.Predictor.from_onnx(None)
    with pytest.raises(TypeError, match="onnx_dir must be a folder"):
        samclip.Predictor(tiny["model"], backend="onnx", onnx_dir=5)
    backend = tiny["backend"]
    with pytest.raises(ValueError, match="exported frame"):
        backend.encode(np.zeros((1, 3, 64, 64), np.float32))
    other = SamClip.from_config(tiny["model"].config).eval()
    with pytest.raises(ValueError, match="other weights"):
        samclip.Predictor(other, backend="onnx", onnx_dir=tiny["dir"])
    with pytest.raises(ValueError, match="merged SamClip"):
        samclip.Predictor(tiny["model"].sam, backend="onnx", onnx_dir=tiny["dir"])
    with pytest.raises(ValueError, match="backend must be"):
        samclip.Predictor(tiny["model"], backend="tensorrt")
    p = samclip.Predictor(tiny["model"], backend="onnx", onnx_dir=tiny["dir"])
    p.set_image(_image())
    with pytest.raises(ValueError, match="image graphs for the frames"):
        p.classify(LABELS, size=64)
    with pytest.raises(ValueError, match="size must be a positive multiple of the patch size"):
        p.set_image(_image(), size="abc")
    broken = tmp_path / "broken"
    shutil.copytree(tiny["dir"], broken)
    (broken / "prompt_decoder.onnx").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="prompt_decoder.onnx: not a loadable ONNX graph"):
        OnnxBackend(broken).open_graphs()


def test_cli_export(tiny, tmp_path, capsys) -> None:  # noqa: ANN001
    assert cli_main(["export", "onnx", "--model", str(tiny["root"] / "model"), "--out", str(tmp_path / "e")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frame"] == 128 and IMAGE_ENCODER_NAME in summary["bytes"] and summary["extra_frames"] == []
    assert (tmp_path / "e" / MANIFEST_NAME).is_file()
    assert cli_main(["info", str(tmp_path / "e")]) == 0  # `samclip info` describes the export from its manifest
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "onnx export" and info["frame"] == 128 and info["bytes"] == {
        k: v for k, v in summary["bytes"].items() if k.endswith(".onnx")}
    assert cli_main(["export", "onnx", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "f")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_int8_decoder_export_is_smaller_and_close(tiny, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "int8"
    assert cli_main(["export", "onnx", "--model", str(tiny["root"] / "model"), "--out", str(out),
                     "--decoder-precision", "int8"]) == 0
    assert json.loads(capsys.readouterr().out)["decoder_precision"] == "int8"
    assert json.loads((out / MANIFEST_NAME).read_text())["decoder_precision"] == "int8"
    files = {IMAGE_ENCODER_NAME, CLIP_HEAD_NAME, *DECODER_NAMES.values(), MANIFEST_NAME, TEXT_ENCODER_NAME,
             TOKENIZER_NAME, DECODER_CACHE_NAME, *CACHED_DECODER_NAMES.values()}
    assert {p.name for p in out.iterdir()} == files
    onnx = pytest.importorskip("onnx")
    for name in (*DECODER_NAMES.values(), *CACHED_DECODER_NAMES.values()):  # integer matmuls on uint8 weights
        ops = [{n.op_type for n in onnx.load(str(d / name)).graph.node} for d in (out, tiny["dir"])]
        assert "MatMulInteger" in ops[0] and "MatMulInteger" not in ops[1]
    backend = OnnxBackend(out, threads=1)
    assert backend.decoder_precision == "int8" and tiny["backend"].decoder_precision == "fp32"
    model = tiny["model"]
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    pts, labels = [[[40.0, 30.0]], [[100.0, 90.0]]], [[1], [1]]
    with torch.no_grad():
        emb = model.sam_embeddings(model.features(x))
        ref, ref_iou = model.decode(emb, torch.tensor(pts), torch.tensor(labels), multimask_output=True)
    for cache in (None, backend.image_cache(emb.numpy())):
        low, iou = backend.decode(emb.numpy(), pts, labels, image_cache=cache)
        err = np.abs(low - ref.numpy())
        assert 0 < err.max() <= 0.1 * float(ref.abs().max())  # quantized (not identical), yet close
        assert ((low > 0) == (ref.numpy() > 0)).mean() >= 0.97
        assert np.abs(iou - ref_iou.numpy()).max() <= 0.05
    with pytest.raises(ValueError, match="decoder_precision"):
        export_onnx(model, tmp_path / "bad", decoder_precision="fp16")


def test_serve_on_an_onnx_export(tiny) -> None:  # noqa: ANN001
    """samclip serve --onnx: the same endpoints on the onnxruntime backend, the same masks and labels."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from samclip.serve import rle_decode
    from samclip.serve.app import create_app

    buf = io.BytesIO()
    Image.fromarray(_image()).save(buf, format="PNG")
    results = {}
    for name, onnx_dir in (("torch", None), ("onnx", tiny["dir"])):
        with TestClient(create_app(tiny["model"], onnx_dir=onnx_dir)) as client:
            info = client.get("/info").json()
            assert info["backend"] == name
            iid = client.post("/images", files={"file": ("s.png", buf.getvalue(), "image/png")}).json()["image_id"]
            body = {"points": [[50, 40]], "point_labels": [1], "labels": LABELS}
            label = client.post(f"/images/{iid}/label", json=body).json()
            semseg = client.post(f"/images/{iid}/semseg", json={"labels": LABELS, "refine": True, "png": False})
            assert semseg.status_code == 200
            results[name] = (rle_decode(label["mask"]["segmentation"]), label["label"], label["probs"])
    (m_t, l_t, p_t), (m_o, l_o, p_o) = results["torch"], results["onnx"]
    assert (m_t == m_o).mean() >= 0.99 and l_t == l_o
    assert max(abs(p_t[k] - p_o[k]) for k in p_t) <= TOL
    with pytest.raises(ValueError, match="other weights"):
        create_app(SamClip.from_config(tiny["model"].config).eval(), onnx_dir=tiny["dir"])


def test_text_encoder_export_matches_the_text_tower(tiny) -> None:  # noqa: ANN001
    """text_encoder.onnx + tokenizer.json: OnnxBackend tokenizes as the model's tokenizer does and embeds as its
    text tower does, so zero-shot needs no PyTorch model."""
    model, backend = tiny["model"], tiny["backend"]
    texts = ["a photo of a star", "a red striped ring next to a blue heart " * 8, "x"]  # one needs truncating
    assert backend.has_text
    np.testing.assert_array_equal(backend.tokenize(texts), model.tokenizer(texts).numpy())
    with torch.no_grad():
        ref = model.encode_text(model.tokenizer(texts), normalize=True).numpy()
    got = backend.encode_text(texts)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= TOL
    # with the image graphs' pooled embedding, zero-shot needs only the export (one view: the predictor's tta=False)
    pixels, hw = backend.preprocess(_image())
    _, _, pooled = backend.encode(pixels, backend.valid_grid(hw))
    pred = samclip.Predictor(model, bf16=False)
    pred.set_image(_image())
    ref_pooled = pred.image_embedding(tta=False).numpy()
    assert np.abs(pooled - ref_pooled).max() <= TOL


def test_predictor_decodes_through_the_image_cache_and_without_it(tiny, monkeypatch) -> None:  # noqa: ANN001
    """The ONNX predictor computes the decoder's first-layer image cache once per image and decodes prompts without
    a mask input through the cached graphs; an export without them (before session 18) decodes the same."""
    onx = samclip.Predictor(tiny["model"], bf16=False, backend="onnx", onnx_dir=tiny["dir"])
    onx.set_image(_image())
    kwargs = {"point_coords": [[50, 40], [100, 20]], "point_labels": [1, 0]}
    m, s, low = onx.predict(**kwargs)
    cache = onx.state.decoder[torch.float32].onnx_first_layer
    assert cache is not None and len(cache) == 4
    onx.predict(box=[10, 12, 90, 80])
    assert onx.state.decoder[torch.float32].onnx_first_layer is cache  # once per image
    monkeypatch.delitem(onx._onnx.manifest, "cached_decoder")
    older = samclip.Predictor(tiny["model"], bf16=False, backend="onnx", onnx_dir=tiny["dir"])
    older._onnx = onx._onnx
    older.set_image(_image())
    m2, s2, low2 = older.predict(**kwargs)
    assert older.state.decoder[torch.float32].onnx_first_layer is None
    assert np.abs(low2 - low).max() <= TOL and np.abs(s2 - s).max() <= TOL and (m2 == m).mean() >= 0.99
    with pytest.raises(ValueError, match="no decoder image cache"):
        onx._onnx.image_cache(np.zeros((1, 32, 8, 8), np.float32))


def test_onnx_predictor_zooms_boxes_as_pytorch_does(tiny) -> None:  # noqa: ANN001
    """predict(zoom=True) on an ONNX predictor: the window goes through the export's image graph at its frame."""
    onx = samclip.Predictor(tiny["model"], bf16=False, backend="onnx", onnx_dir=tiny["dir"])
    ref = samclip.Predictor(tiny["model"], bf16=False)
    box = [40, 30, 58, 44]
    out = []
    for pred in (onx, ref):
        pred.set_image(_image())
        out.append(pred.predict(box=box, multimask_output=False, zoom=True, return_logits=True))
    (lo, so, low_o), (lr, sr, low_r) = out
    assert np.abs(lo - lr).max() <= TOL and np.abs(so - sr).max() <= TOL and np.abs(low_o - low_r).max() <= TOL
    plain, _, _ = ref.predict(box=box, multimask_output=False, return_logits=True)
    assert np.abs(plain - lr).max() > 0.1  # the window pass, not the image's
    mask = lr > 0  # pooling="zoom": the window's pass through the export's image and CLIP-head graphs
    eo, _ = onx.mask_embeddings(mask, pooling="zoom")
    er, _ = ref.mask_embeddings(mask, pooling="zoom")
    assert mask.any() and float((eo - er).abs().max()) <= TOL
