"""The Predictor on a tiny random merged model: shapes, coordinate conventions, one backbone pass, caches,
bad inputs; and its helpers (connected components, NMS, stability score, mask pooling weights)."""

from __future__ import annotations

import copy
from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import samclip
from samclip.inference import (
    REGION_CONTEXT,
    REGION_MIN_COVER,
    box_nms,
    build_point_grid,
    connected_components,
    mask_crops,
    mask_to_grid_weights,
    preprocess_shape,
    stability_score,
    to_rgb_uint8,
    valid_grid,
)
from samclip.models import CLIP, ClipHeadConfig, SamClip, clip_preset
from samclip.predictor import Instance, Predictor, SemanticResult
from samclip.tokenizer import ClipTokenizer

LABELS = ["star", "ring", "heart"]


@pytest.fixture(scope="module")
def models() -> tuple[SamClip, samclip.Sam]:
    torch.manual_seed(0)
    sam = samclip.create_sam("sam-tiny")
    tok = ClipTokenizer.train(["a red star", "a blue ring next to a green square", "a photo of a heart",
                               "a plain background"] * 5, vocab_size=100, context_length=16)
    base = clip_preset("clip-tiny")
    cfg = base.replace(text=base.text.replace(vocab_size=tok.vocab_size, sot_token_id=tok.sot_token_id,
                                              eot_token_id=tok.eot_token_id))
    clip = CLIP.from_config(cfg)
    clip.tokenizer = tok
    merged = SamClip.from_teachers(sam, clip, ClipHeadConfig(mlp_hidden=16, out_dim=clip.config.embed_dim))
    return merged.eval(), sam.eval()


@pytest.fixture(scope="module")
def merged(models) -> SamClip:  # noqa: ANN001
    return models[0]


@pytest.fixture(scope="module")
def plain_sam(models) -> samclip.Sam:  # noqa: ANN001
    return models[1]


def image(h: int = 90, w: int = 200, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def count_backbone(model: SamClip | samclip.Sam) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    encoder = model.backbone if isinstance(model, SamClip) else model.image_encoder
    calls = [0]
    handle = encoder.patch_embed.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls, handle


# ----------------------------------------------------------------------------------- one pass
def test_every_task_after_set_image_reuses_the_one_backbone_pass(merged: SamClip) -> None:
    pred = Predictor(merged)
    calls, handle = count_backbone(merged)
    try:
        state = pred.set_image(image())
        assert calls[0] == 1
        assert state.original_size == (90, 200) and state.input_size == (58, 128) and state.frame == 128

        probs = pred.classify(LABELS)
        assert probs.shape == (3,) and probs.dtype == np.float32 and abs(probs.sum() - 1) < 1e-5

        sem = pred.semantic_segment(LABELS)
        assert isinstance(sem, SemanticResult) and not sem.refined
        assert sem.label_map.shape == (90, 200) and sem.logits.shape == (4, 90, 200)
        assert sem.names == ["background", *LABELS]
        assert set(np.unique(sem.label_map)) <= {0, 1, 2, 3}
        assert np.allclose(sem.probs.sum(0), 1, atol=1e-4)
        np.testing.assert_array_equal(sem.label_map, sem.logits.argmax(0))

        ref = pred.semantic_segment(LABELS, refine=True, threshold=0.0)
        assert ref.refined and ref.label_map.shape == (90, 200) and ref.logits.shape == (4, 90, 200)

        masks, scores, low = pred.predict(point_coords=[[20, 30]], point_labels=[1])
        assert masks.shape == (3, 90, 200) and masks.dtype == bool
        assert scores.shape == (3,) and low.shape == (3, 32, 32)
        masks1, scores1, low1 = pred.predict(box=[10, 10, 60, 50], mask_input=low[:1], multimask_output=False)
        assert masks1.shape == (1, 90, 200) and scores1.shape == (1,) and low1.shape == (1, 32, 32)
        logits, _, _ = pred.predict(point_coords=[[20, 30]], point_labels=[1], return_logits=True)
        assert logits.dtype == np.float32 and logits.shape == (3, 90, 200)

        m, iou, lo = pred.predict_torch(torch.tensor([[[5.0, 5.0]], [[150.0, 60.0]]]), torch.ones(2, 1),
                                        boxes=torch.tensor([[0.0, 0.0, 50.0, 50.0], [100.0, 20.0, 190.0, 80.0]]))
        assert m.shape == (2, 3, 90, 200) and iou.shape == (2, 3) and lo.shape == (2, 3, 32, 32)
        many = torch.rand(40, 1, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([200.0, 90.0])
        m40 = pred.predict_torch(many, torch.ones(40, 1))[0]  # thresholded 16 prompts at a time
        assert torch.equal(m40, pred.predict_torch(many, torch.ones(40, 1), return_logits=True)[0] > 0.0)

        idx, lp = pred.label_masks(masks, LABELS)
        assert idx.shape == (3,) and lp.shape == (3, 3)

        inst = pred.segment_text("star", vocabulary=["ring"], threshold=0.0)
        assert all(isinstance(i, Instance) and i.mask.shape == (90, 200) for i in inst)

        out = pred.generate(LABELS, points_per_side=4, pred_iou_thresh=-1e9, stability_score_thresh=0.0)
        for r in out:
            assert r["segmentation"].shape == (90, 200) and r["area"] == int(r["segmentation"].sum())
            assert r["label"] in LABELS and 0 <= r["label_score"] <= 1
        assert calls[0] == 1, "a task after set_image ran the backbone again"
    finally:
        handle.remove()


def test_generate_labels_each_mask_with_the_chosen_pooling(merged: SamClip) -> None:
    """generate(vocabulary, pooling=...) labels its masks as label_masks with that pooling does."""
    pred = Predictor(merged)
    pred.set_image(image(90, 200))
    kw = {"points_per_side": 4, "pred_iou_thresh": -1e9, "stability_score_thresh": 0.0}
    scores = {}
    for pooling, tta in (("max", False), ("crop", False), ("max", True), ("max+crop", True)):
        out = pred.generate(LABELS, pooling=pooling, tta=tta, **kw)
        assert out
        idx, probs = pred.label_masks(np.stack([r["segmentation"] for r in out]), LABELS, pooling=pooling, tta=tta)
        assert [r["label"] for r in out] == [LABELS[i] for i in idx]
        scores[pooling, tta] = np.array([r["label_score"] for r in out])
        assert np.allclose(scores[pooling, tta], probs[np.arange(len(idx)), idx], atol=1e-6)
    assert not np.allclose(scores["max", False], scores["crop", False])
    assert not np.allclose(scores["max", False], scores["max", True])  # the mirrored view is pooled in


@pytest.mark.parametrize("task", ["generate", "crop_labels", "refine"])
def test_interruptible_stops_a_task_between_batches_and_keeps_the_image(merged: SamClip, task: str) -> None:
    """Inside interruptible(check), long tasks ask check() between batches and raise Interrupted once it is True;
    the image state is untouched (the same answers afterwards) and the check is gone after the block."""
    from samclip.errors import Interrupted

    pred = Predictor(merged)
    pred.set_image(image(90, 200))
    kw = {"points_per_side": 8, "points_per_batch": 8, "pred_iou_thresh": -1e9, "stability_score_thresh": 0.0}
    masks = np.stack([r["segmentation"] for r in pred.generate(**kw)])
    run = {"generate": lambda: pred.generate(**kw),
           "crop_labels": lambda: pred.label_masks(masks, LABELS, pooling="crop"),
           "refine": lambda: pred.semantic_segment(LABELS, refine=True)}[task]
    before = run()
    asked: list[int] = []
    with pred.interruptible(lambda: asked.append(1) is not None):  # never stops; counts the checks
        again = run()
    checks, asked[:] = len(asked), []
    assert checks >= (9 if task == "generate" else 1)  # generate: one per batch of its 64 points, and more
    with pred.interruptible(lambda: asked.append(1) is None and len(asked) >= checks), pytest.raises(Interrupted):
        run()  # stopped at its last check
    after = run()
    for got in (again, after):
        if task == "generate":
            assert [r["bbox"] for r in got] == [r["bbox"] for r in before]
        elif task == "crop_labels":
            assert np.array_equal(got[0], before[0])
        else:
            assert np.array_equal(got.label_map, before.label_map)


def test_set_images_batches_and_select(merged: SamClip) -> None:
    pred = Predictor(merged)
    calls, handle = count_backbone(merged)
    try:
        states = pred.set_images([image(90, 200), image(60, 40, seed=1), image(128, 128, seed=2)], batch_size=4)
    finally:
        handle.remove()
    assert calls[0] == 1 and len(states) == 3
    assert pred.state is states[0]
    assert pred.select(1).original_size == (60, 40)
    masks, _, _ = pred.predict(point_coords=[[10, 10]], point_labels=[1])
    assert masks.shape == (3, 60, 40)
    generated = pred.set_images(image(32, 48, seed=s) for s in range(2))  # a generator is a list of images too
    assert [st.original_size for st in generated] == [(32, 48), (32, 48)]
    assert pred.select(states[2]) is states[2]
    single = Predictor(merged).set_image(image(60, 40, seed=1))
    torch.testing.assert_close(states[1].sam_embeddings.float(), single.sam_embeddings.float(), atol=2e-2, rtol=0)
    with pytest.raises(IndexError):
        pred.select(5)


def test_get_image_embedding_is_the_cached_sam_embedding_as_a_copy(merged: SamClip) -> None:
    pred = Predictor(merged)
    with pytest.raises(RuntimeError, match="set_image"):
        pred.get_image_embedding()
    pred.set_image(image(90, 200))
    emb = pred.get_image_embedding()
    grid = merged.img_size // merged.sam.config.image_encoder.patch_size
    assert emb.shape == (1, merged.sam.config.image_encoder.out_chans, grid, grid)
    assert torch.equal(emb, pred.state.sam_embeddings)
    emb.zero_()  # before any decode caches anything: the predictor must not see it
    fresh = Predictor(merged)
    fresh.set_image(image(90, 200))
    np.testing.assert_array_equal(pred.predict(point_coords=[[20, 30]], point_labels=[1])[1],
                                  fresh.predict(point_coords=[[20, 30]], point_labels=[1])[1])


def test_classify_size_runs_one_extra_pass_and_caches_it(merged: SamClip) -> None:
    pred = Predictor(merged)
    pred.set_image(image())
    calls, handle = count_backbone(merged)
    try:
        a = pred.classify(LABELS, size=64)
        b = pred.classify(LABELS, size=64)
    finally:
        handle.remove()
    assert calls[0] == 1
    np.testing.assert_allclose(a, b)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        pred.classify(LABELS, size=50)


def test_classify_tta_is_the_mean_of_the_mirrored_and_resized_views(merged: SamClip) -> None:
    """With tta_flip + tta_sizes the image embedding is the normalised mean of the embeddings of the image at
    clip_size and each tta size, each also mirrored: one extra pass per view, cached; classify uses it."""
    img = image()
    plain = Predictor(merged)
    views = []
    for size in (64, 32):
        for mirrored in (False, True):
            plain.set_image(np.ascontiguousarray(img[:, ::-1]) if mirrored else img)
            views.append(plain.image_embedding(size=size, tta=False))
    expected = F.normalize(sum(views), dim=-1)
    old = merged.config
    merged.config = old.replace(clip_size=64, tta_flip=True, tta_sizes=(32,))
    pred = Predictor(merged)
    pred.set_image(img)
    calls, handle = count_backbone(merged)
    try:
        got = pred.image_embedding()
        probs = pred.classify(LABELS)
        single = pred.classify(LABELS, tta=False)  # the 64 px pass, already cached
    finally:
        handle.remove()
        merged.config = old
    assert calls[0] == 4
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    txt = pred.text_embeddings(LABELS)
    want = (merged.logit_scale.exp() * got @ txt.T).softmax(-1)[0]
    np.testing.assert_allclose(probs, want.detach().numpy(), atol=1e-5)
    assert not np.allclose(probs, single, atol=1e-6)
    mirrored_only = pred.image_embedding(size=64, tta=True)  # a model without TTA settings: image + mirror
    torch.testing.assert_close(mirrored_only, F.normalize(views[0] + views[1], dim=-1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        old.replace(tta_sizes=(50,))


def test_max_plus_crop_pooling_sums_the_one_pass_and_crop_reads(merged: SamClip) -> None:
    """pooling="max+crop": the normalised sum of the max-pool read and the crop read (with tta: the mirrored view,
    the mirrored crop); an empty mask stays an all-zero, flagged row."""
    pred = Predictor(merged)
    pred.set_image(image())
    masks = np.zeros((3, 90, 200), bool)
    masks[0, 10:60, 20:90] = True
    masks[1, 40:80, 150:190] = True  # masks[2] empty
    for tta in (False, True):
        got, empty = pred.mask_embeddings(masks, pooling="max+crop", tta=tta)
        one_pass, _ = pred.mask_embeddings(masks, pooling="max", tta=tta)
        crops, _ = pred.mask_embeddings(masks, pooling="crop", tta=tta)
        torch.testing.assert_close(got[:2], F.normalize(one_pass[:2] + crops[:2], dim=-1), atol=1e-5, rtol=0)
        assert empty.tolist() == [False, False, True] and not got[2].any()
        assert not torch.allclose(got[:2], one_pass[:2], atol=1e-3)
        assert not torch.allclose(got[:2], crops[:2], atol=1e-3)
    idx, probs = pred.label_masks(masks, LABELS, pooling="max+crop")
    assert idx.tolist()[2] == -1 and np.allclose(probs[:2].sum(1), 1, atol=1e-5)
    # tta on a crop read: the crop and its mirror image, each encoded by the merged model, summed
    crops = torch.from_numpy(mask_crops(pred.state.image, masks[:2], merged.config.clip_size)).permute(0, 3, 1, 2)
    with torch.no_grad():
        enc = [merged.encode_image(merged.preprocess(x, merged.config.clip_size), normalize=True)
               for x in (crops, crops.flip(-1))]
    got, _ = pred.mask_embeddings(masks[:2], pooling="crop", tta=True)
    torch.testing.assert_close(got, F.normalize(enc[0] + enc[1], dim=-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_mask_embedding_tta_adds_the_mirrored_mask_on_the_mirrored_image(merged: SamClip, pooling: str) -> None:
    img = image()
    masks = np.zeros((2, 90, 200), bool)
    masks[0, 10:60, 20:90] = True  # left of centre: mirrored, it lies on the right
    masks[1, 40:80, 150:190] = True
    plain = Predictor(merged)
    plain.set_image(img)
    a, _ = plain.mask_embeddings(masks, pooling=pooling, tta=False)
    plain.set_image(np.ascontiguousarray(img[:, ::-1]))
    b, _ = plain.mask_embeddings(np.ascontiguousarray(masks[:, :, ::-1]), pooling=pooling, tta=False)
    old = merged.config
    merged.config = old.replace(tta_flip=True)  # classification's TTA setting does not turn it on here
    try:
        pred = Predictor(merged)
        pred.set_image(img)
        got, empty = pred.mask_embeddings(masks, pooling=pooling, tta=True)
        single, _ = pred.mask_embeddings(masks, pooling=pooling)
    finally:
        merged.config = old
    torch.testing.assert_close(got, F.normalize(a + b, dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(single, a, atol=1e-6, rtol=0)
    assert not empty.any()


def test_text_embedding_cache(merged: SamClip) -> None:
    pred = Predictor(merged)
    pred.set_image(image())
    pred.classify(LABELS)
    info = pred.text_cache_info
    assert info["misses"] == 3 and info["hits"] == 0
    pred.classify(LABELS[::-1])
    pred.label_masks(np.ones((1, 90, 200), bool), LABELS)
    assert pred.text_cache_info["misses"] == 3 and pred.text_cache_info["hits"] == 6
    pred.classify(LABELS, templates=["a {}"])  # other templates: another content key
    assert pred.text_cache_info["misses"] == 6
    emb = pred.text_embeddings(LABELS)
    assert emb.shape == (3, merged.config.head.out_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_prompt_templates_come_from_the_predictor_then_the_model(merged: SamClip) -> None:
    """Text tasks without ``templates=`` use the predictor's: given to it, else the model config's, else the scene
    world's; the model's config keeps them through a save."""
    from samclip.data import class_prompt_templates
    from samclip.models import SamClipConfig

    photo = ("a photo of a {}.", "a photo of the {}.")
    assert Predictor(merged).templates == tuple(class_prompt_templates())
    default = Predictor(merged).text_embeddings(LABELS)
    mine = Predictor(merged, templates=photo)
    assert mine.templates == photo
    torch.testing.assert_close(mine.text_embeddings(LABELS), Predictor(merged).text_embeddings(LABELS, photo))
    assert not torch.allclose(mine.text_embeddings(LABELS), default)
    config = merged.config
    try:
        merged.config = config.replace(templates=photo)
        torch.testing.assert_close(Predictor(merged).text_embeddings(LABELS), mine.text_embeddings(LABELS))
        assert Predictor(merged, templates=["a {}"]).templates == ("a {}",)  # the predictor's win
        assert SamClipConfig.from_dict(merged.config.to_dict()).templates == photo
    finally:
        merged.config = config
    with pytest.raises(ValueError, match="one '{}'"):
        config.replace(templates=("no placeholder",))
    with pytest.raises(ValueError, match="containing"):
        Predictor(merged, templates=["a photo"])


# -------------------------------------------------------------------------- coordinate conventions
def _box_stub(model, captured: list):  # noqa: ANN001, ANN202
    """decode() whose low-res logits are +10 exactly where the cell centre is inside the prompted box
    (input-frame pixels), else -10; records every call's prompts."""
    grid = 8
    low = 4 * grid
    cell = model.img_size / low

    def decode(emb, point_coords=None, point_labels=None, boxes=None, mask_input=None, multimask_output=True,  # noqa: ANN001, ANN202
               image_cache=None):  # noqa: ANN001
        captured.append({"points": point_coords, "labels": point_labels, "boxes": boxes, "mask": mask_input})
        n = next(x.shape[0] for x in (point_coords, boxes, mask_input) if x is not None)
        centres = (torch.arange(low) + 0.5) * cell - 0.5
        out = torch.full((n, 1, low, low), -10.0)
        if boxes is not None:
            for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
                inside = ((centres[None, :] >= x0) & (centres[None, :] <= x1)
                          & (centres[:, None] >= y0) & (centres[:, None] <= y1))
                out[i, 0][inside] = 10.0
        c = 3 if multimask_output else 1
        return out.expand(n, c, low, low).clone(), torch.full((n, c), 0.9)

    return decode


@pytest.mark.parametrize("size", [(90, 200), (200, 90)])
def test_box_on_left_half_gives_mask_on_left_half(merged: SamClip, monkeypatch, size) -> None:  # noqa: ANN001
    h, w = size
    captured: list = []
    monkeypatch.setattr(merged, "decode", _box_stub(merged, captured))
    pred = Predictor(merged)
    pred.set_image(image(h, w))
    masks, _, _ = pred.predict(box=[0, 0, w / 2 - 1, h - 1], multimask_output=False)
    assert masks.shape == (1, h, w)
    tol = 8  # one low-res cell is 4 frame px = up to 6.25 original px
    assert masks[0, : h - tol, : w // 2 - tol].all()  # the last rows depend on the stub's cell centres
    assert not masks[0, :, w // 2 + tol :].any()
    # top-left quadrant: both axes
    masks, _, _ = pred.predict(box=[0, 0, w / 2 - 1, h / 2 - 1], multimask_output=False)
    assert masks[0, : h // 2 - tol, : w // 2 - tol].all()
    assert not masks[0, h // 2 + tol :].any() and not masks[0, :, w // 2 + tol :].any()
    sx, sy = pred.input_size[1] / w, pred.input_size[0] / h
    torch.testing.assert_close(captured[-1]["boxes"], torch.tensor([[0, 0, (w / 2 - 1) * sx, (h / 2 - 1) * sy]]))


@pytest.mark.parametrize("size", [(90, 200), (200, 90)])
def test_zoomed_box_is_decoded_in_its_window_and_mapped_back(merged: SamClip, monkeypatch, size) -> None:  # noqa: ANN001
    """zoom=True: one more backbone pass over a square of 3x the box's longer side around the box; the box reaches
    the decoder in that window's frame, the mask comes back in original pixels (finer than the image's own
    low-res cells), the low-res logits in the image's frame; the current image stays current."""
    from samclip.inference.zoom import zoom_window

    h, w = size
    captured: list = []
    monkeypatch.setattr(merged, "decode", _box_stub(merged, captured))
    pred = Predictor(merged)
    calls, handle = count_backbone(merged)
    try:
        state = pred.set_image(image(h, w))
        box = [0.3 * w, 0.4 * h, 0.3 * w + 12, 0.4 * h + 10]
        masks, scores, low = pred.predict(box=box, multimask_output=False, zoom=True,
                                          point_coords=[[0.3 * w + 6, 0.4 * h + 5], [1, 1]], point_labels=[1, 0])
    finally:
        handle.remove()
    assert calls[0] == 2 and pred.state is state and masks.shape == (1, h, w) and scores.shape == (1,)
    x0, y0, x1, y1 = zoom_window(box, (h, w))
    assert x1 - x0 <= 37 and y1 - y0 <= 37 and x0 <= box[0] and box[2] <= x1 and y0 <= box[1] and box[3] <= y1
    scale = merged.img_size / max(x1 - x0, y1 - y0)  # the window fills the frame's longer side
    sent = captured[-1]["boxes"][0]
    torch.testing.assert_close(sent, torch.tensor([box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0]) * scale,
                               atol=1e-3, rtol=1e-3)
    assert captured[-1]["labels"].tolist() == [[1, -1]]  # the point outside the window is padding
    ys, xs = np.nonzero(masks[0])
    assert abs(xs.min() - box[0]) <= 1.5 and abs(xs.max() - box[2]) <= 1.5  # window cells are < 1 original px
    assert abs(ys.min() - box[1]) <= 1.5 and abs(ys.max() - box[3]) <= 1.5
    assert low.shape == (1, 4 * pred.state.grid, 4 * pred.state.grid)
    back = merged.postprocess_masks(torch.from_numpy(low)[None], pred.input_size, pred.original_size)[0, 0] > 0
    assert back[int(0.4 * h) + 5, int(0.3 * w) + 6] and not back[:, : int(0.3 * w) - 8].any()
    pred.predict(box=box, mask_input=low, multimask_output=False)  # usable as a mask prompt of the image
    # a box whose window would not be smaller than the image: the ordinary pass, the same outputs
    big = [0, 0, 0.5 * w, 0.5 * h]
    for a, b in zip(pred.predict(box=big, zoom=True), pred.predict(box=big), strict=True):
        np.testing.assert_array_equal(a, b)
    # a click whose ordinary mask is empty (the stub draws only boxes): nothing to zoom into, the ordinary pass
    for a, b in zip(pred.predict(point_coords=[[5, 5]], point_labels=[1], zoom=True),
                    pred.predict(point_coords=[[5, 5]], point_labels=[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="zoom does not take a mask_input"):
        pred.predict(box=box, mask_input=low, zoom=True)


def test_zoom_window_geometry() -> None:
    from samclip.inference.zoom import ZOOM_CONTEXT, ZOOM_MAX_MAGNIFICATION, zoom_window

    assert zoom_window((40, 30, 60, 40), (90, 200)) == (20, 5, 80, 65)  # 3 x 20 px around the centre (50, 35)
    assert zoom_window((0, 0, 60, 40), (90, 200)) == (0, 0, 120, 90)  # 180 px around (30, 20), clipped
    assert zoom_window((0, 0, 70, 30), (90, 200)) is None  # 210 px: not smaller than the image's 200
    x0, y0, x1, y1 = zoom_window((100, 40, 101, 41), (90, 200))  # a 1 px box: the window's smallest side
    assert x1 - x0 == 200 / ZOOM_MAX_MAGNIFICATION and y1 - y0 == 200 / ZOOM_MAX_MAGNIFICATION
    x0, y0, x1, y1 = zoom_window((300, 300, 320, 330), (90, 200))  # outside: clipped into the image first
    assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 90 and x1 == 200 and y1 == 90
    assert ZOOM_CONTEXT == 3.0


def test_zoomed_click_whose_mask_spans_the_image_is_the_ordinary_pass(merged: SamClip) -> None:
    """The random model's best mask for a click spans the image: its window would not magnify, so zoom=True
    returns the ordinary point-only prediction (not the point plus that box). The zoomed case on real objects:
    tests/test_shipped.py."""
    pred = Predictor(merged, bf16=False)
    pred.set_image(image(120, 160, seed=3))
    kwargs = {"point_coords": [[80, 56]], "point_labels": [1]}
    masks, scores, _ = pred.predict(**kwargs)
    ys, xs = np.nonzero(masks[int(np.argmax(scores))])
    assert 3 * max(xs.max() - xs.min(), ys.max() - ys.min()) >= 160
    for a, b in zip(pred.predict(**kwargs, zoom=True), pred.predict(**kwargs), strict=True):
        np.testing.assert_array_equal(a, b)


def test_zoom_pooling_reads_each_mask_on_its_zoom_window(merged: SamClip) -> None:
    """pooling="zoom": max pooling of the mask on the pass over its box's zoom window (the same read as a
    predictor set on the window itself), cached with the image (shared with predict(zoom=True)); a mask whose
    window would not magnify reads the image's own pass; tta adds the window's mirrored pass."""
    from samclip.inference.zoom import zoom_window

    img = image(120, 160, seed=3)
    pred, alone = Predictor(merged, bf16=False), Predictor(merged, bf16=False)
    pred.set_image(img)
    small, big = np.zeros((2, 120, 160), bool)
    small[50:62, 70:90] = True
    big[10:110, 20:150] = True
    calls, handle = count_backbone(merged)
    try:
        emb, empty = pred.mask_embeddings(np.stack([small, big, np.zeros_like(small)]), pooling="zoom")
        again, _ = pred.mask_embeddings(small[None], pooling="zoom")
        pred.predict(box=[70, 50, 89, 61], zoom=True)  # the same window: its pass is reused
        assert calls[0] == 1
        pred.mask_embeddings(small[None], pooling="zoom", tta=True)
        assert calls[0] == 2  # the window's mirrored pass
    finally:
        handle.remove()
    assert empty.tolist() == [False, False, True] and not emb[2].any()
    x0, y0, x1, y1 = zoom_window((70, 50, 89, 61), (120, 160))
    alone.set_image(img[y0:y1, x0:x1])
    ref, _ = alone.mask_embeddings(small[None, y0:y1, x0:x1], pooling="max")
    torch.testing.assert_close(emb[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again[0], emb[0])
    plain, _ = pred.mask_embeddings(big[None], pooling="max")
    torch.testing.assert_close(emb[1], plain[0])  # 3 x its box is not smaller than the image
    both, _ = pred.mask_embeddings(small[None], pooling="zoom+crop")
    crop, _ = pred.mask_embeddings(small[None], pooling="crop")
    torch.testing.assert_close(both[0], torch.nn.functional.normalize(emb[0] + crop[0], dim=-1))


def test_zoom_window_passes_kept_are_bounded(merged: SamClip) -> None:
    from samclip.predictor.zoom import WINDOWS_KEPT, window_state

    pred = Predictor(merged)
    pred.set_image(image(120, 160))
    windows = [(i, 0, i + 40, 40) for i in range(WINDOWS_KEPT + 1)]
    calls, handle = count_backbone(merged)
    try:
        states = [window_state(pred, w) for w in windows]
        assert window_state(pred, windows[-1]) is states[-1] and calls[0] == WINDOWS_KEPT + 1
        assert window_state(pred, windows[0]) is not states[0] and calls[0] == WINDOWS_KEPT + 2  # the oldest left
    finally:
        handle.remove()
    assert states[1].original_size == (40, 40)


def test_zoomed_box_equals_the_window_predicted_alone(merged: SamClip) -> None:
    """On the real (random) SAM head: the zoomed prediction is the window's own image predicted with the shifted
    box, its logits pasted into the image (each mask's lowest logit outside the window)."""
    from samclip.inference.zoom import zoom_window

    img = image(120, 160, seed=3)
    pred, alone = Predictor(merged, bf16=False), Predictor(merged, bf16=False)
    pred.set_image(img)
    box = np.array([70, 50, 90, 62], np.float32)
    logits, scores, _ = pred.predict(box=box, zoom=True, return_logits=True)
    x0, y0, x1, y1 = zoom_window(box, (120, 160))
    alone.set_image(img[y0:y1, x0:x1])
    ref, ref_scores, _ = alone.predict(box=box - np.array([x0, y0, x0, y0], np.float32), return_logits=True)
    np.testing.assert_allclose(logits[:, y0:y1, x0:x1], ref, atol=1e-5)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    outside = logits.copy()
    outside[:, y0:y1, x0:x1] = np.inf
    assert (outside.min(axis=(1, 2)) == ref.min(axis=(1, 2))).all() and logits.shape == (3, 120, 160)


def test_point_coordinates_are_mapped_into_the_frame(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    captured: list = []
    monkeypatch.setattr(merged, "decode", _box_stub(merged, captured))
    pred = Predictor(merged)
    pred.set_image(image(90, 200))  # input (58, 128)
    pred.predict(point_coords=[[100, 45], [199, 0]], point_labels=[1, 0])
    sx, sy = 128 / 200, 58 / 90
    torch.testing.assert_close(captured[-1]["points"], torch.tensor([[[100 * sx, 45 * sy], [199 * sx, 0.0]]]))
    torch.testing.assert_close(captured[-1]["labels"], torch.tensor([[1, 0]]))
    # outside the image: clipped into it, no error
    pred.predict(point_coords=[[-50, 1e6]], point_labels=[1])
    torch.testing.assert_close(captured[-1]["points"], torch.tensor([[[0.0, 89 * sy]]]))
    pred.predict(box=[-10, -10, 500, 500])
    torch.testing.assert_close(captured[-1]["boxes"], torch.tensor([[0.0, 0.0, 199 * sx, 89 * sy]]))


def test_semantic_map_is_cropped_and_resized_correctly(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    pred = Predictor(merged)
    pred.set_image(image(90, 200))  # valid tokens: 4 rows x 8 columns of the 8x8 grid

    def fake_logits(state, labels, templates, background, refine=False):  # noqa: ANN001, ANN202
        out = torch.zeros(len(labels) + 1, 8, 8)
        out[1, :, :4] = 10.0  # label 1 on the left half of the frame = left half of the image
        out[2, :, 4:] = 10.0
        return out

    monkeypatch.setattr(pred, "_class_logits", fake_logits)
    sem = pred.semantic_segment(["a", "b"])
    assert (sem.label_map[:, :90] == 1).all() and (sem.label_map[:, 110:] == 2).all()


def test_refinement_prompts_read_the_refine_pool_window(merged: SamClip) -> None:
    """refine_pool: the refinement's coarse map is the head's max-pool read over that window; the map without
    refinement stays the per-patch (dense_pool) read; 0 or dense_pool means the per-patch map itself."""
    model = copy.deepcopy(merged)
    pred = Predictor(model)
    state = pred.set_image(image(128, 128))
    tokens = pred._head_tokens(state)
    plain = F.normalize(model.clip_head.per_patch(tokens, 1).float(), dim=-1)[0]
    wide = F.normalize(model.clip_head.per_patch(tokens, 3).float(), dim=-1)[0]
    assert not torch.allclose(plain, wide)
    for refine_pool, want in ((0, plain), (1, plain), (3, wide)):
        model.clip_head.config = model.clip_head.config.replace(dense_pool=1, refine_pool=refine_pool)
        state.refine_embeddings = state.patch_embeddings = None
        torch.testing.assert_close(pred._refine_embeddings(state), want)
        torch.testing.assert_close(pred._patch_embeddings(state), plain)
        coarse = pred._class_logits(state, LABELS, None, True)
        refined = pred._class_logits(state, LABELS, None, True, refine=True)
        txt = torch.cat([pred._background_embedding(), pred.text_embeddings(LABELS)])
        torch.testing.assert_close(refined, pred._logit_scale() * torch.einsum("ghe,ke->kgh", want, txt))
        torch.testing.assert_close(coarse, pred._logit_scale() * torch.einsum("ghe,ke->kgh", plain, txt))
    assert pred.semantic_segment(LABELS, refine=True).label_map.shape == (128, 128)
    with pytest.raises(ValueError, match="refine_pool"):
        ClipHeadConfig(refine_pool=2)


def test_segment_text_one_instance_per_region(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    pred = Predictor(merged)
    pred.set_image(image(128, 128))

    def fake_logits(state, labels, templates, background, refine=False):  # noqa: ANN001, ANN202
        out = torch.zeros(len(labels) + 1, 8, 8)
        out[1, 1:3, 1:3] = 10.0  # two separate blobs of the phrase
        out[1, 5:7, 5:7] = 10.0
        return out

    def disk_decode(emb, point_coords=None, point_labels=None, boxes=None, mask_input=None,  # noqa: ANN001, ANN202
                    multimask_output=True, image_cache=None):
        n = point_coords.shape[0]
        yy, xx = torch.meshgrid(torch.arange(32) * 4.0 + 1.5, torch.arange(32) * 4.0 + 1.5, indexing="ij")
        d = (xx[None] - point_coords[:, 0, 0, None, None]) ** 2 + (yy[None] - point_coords[:, 0, 1, None, None]) ** 2
        out = torch.where(d < 15**2, 10.0, -10.0)[:, None].expand(n, 3, 32, 32)
        return out.clone(), torch.tensor([[0.5, 0.9, 0.7]]).expand(n, 3)

    monkeypatch.setattr(pred, "_class_logits", fake_logits)
    monkeypatch.setattr(merged, "decode", disk_decode)
    inst = pred.segment_text("star", vocabulary=["ring"], verify=False)
    assert len(inst) == 2
    for i in inst:
        x, y = i.point
        assert i.mask[int(y), int(x)] and i.mask.shape == (128, 128)
        assert i.box[0] <= x <= i.box[2] and i.box[1] <= y <= i.box[3]
        assert abs(i.predicted_iou - 0.9) < 1e-6 and 0 < i.score <= 0.9
    assert {(int(i.point[0]) // 64, int(i.point[1]) // 64) for i in inst} == {(0, 0), (1, 1)}

    # verify=True (default): each mask is read again over itself; the one read as "ring" is dropped
    star, ring = pred.text_embeddings(["star", "ring"])

    def fake_mask_embeddings(masks, **kwargs):  # noqa: ANN001, ANN003, ANN202
        top_left = torch.from_numpy(masks[:, :64, :64].any((1, 2)))
        return torch.where(top_left[:, None], star, ring), torch.zeros(len(masks), dtype=torch.bool)

    monkeypatch.setattr(pred, "mask_embeddings", fake_mask_embeddings)
    inst = pred.segment_text("star", vocabulary=["ring"])
    assert len(inst) == 1 and int(inst[0].point[0]) // 64 == 0 and int(inst[0].point[1]) // 64 == 0
    txt = torch.cat([pred._background_embedding(), pred.text_embeddings(["star", "ring"])])
    prob = float((pred._logit_scale() * star @ txt.T).softmax(-1)[1])
    assert abs(inst[0].score - 0.9 * prob) < 1e-5  # predicted IoU x the phrase's probability in the read


def test_label_masks_pools_the_right_patches(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    pred = Predictor(merged)
    pred.set_image(image(90, 200))
    text = pred.text_embeddings(["left", "right"])
    patch = torch.zeros(8, 8, text.shape[1])
    patch[:, :4] = text[0]
    patch[:, 4:] = text[1]
    monkeypatch.setattr(pred, "_patch_embeddings", lambda state: patch)
    masks = np.zeros((3, 90, 200), bool)
    masks[0, :, :60] = True
    masks[1, 10:80, 150:] = True
    idx, probs = pred.label_masks(masks, ["left", "right"], pooling="mean")
    assert idx.tolist() == [0, 1, -1]  # the empty mask is flagged with -1 and a zero row
    assert probs[0, 0] > 0.5 and probs[1, 1] > 0.5 and (probs[2] == 0).all()
    with pytest.raises(ValueError, match="pooling"):
        pred.label_masks(masks, ["left", "right"], pooling="maximum")


def test_label_masks_max_pooling_reads_the_covered_head_tokens(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    """pooling="max": the head's max-pool limited to each mask's patches (>= REGION_MIN_COVER covered, else
    the most covered one), grown by REGION_CONTEXT rings of neighbours that stay inside the image, on the
    cached head tokens of the classification pass: no backbone or head re-run."""
    pred = Predictor(merged)
    state = pred.set_image(image(90, 200))
    head_tokens = pred._head_tokens(state)
    seen = []
    real = merged.clip_head.masked_pooled

    def spy(tokens: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        assert torch.equal(tokens[0], head_tokens[0])
        seen.append(select.clone())
        return real(tokens, select)

    monkeypatch.setattr(merged.clip_head, "masked_pooled", spy)
    monkeypatch.setattr(merged, "features", lambda *a, **k: pytest.fail("no new backbone pass"))
    masks = np.zeros((3, 90, 200), bool)
    masks[0, :, :60] = True
    masks[2, 45, 190] = True  # one pixel -> its patch only
    emb, empty = pred.mask_embeddings(masks, pooling="max", context=0)
    assert empty.tolist() == [False, True, False] and (emb[1] == 0).all()
    select = seen[0]
    assert select.shape[0] == 2 and int(select[1].sum()) == 1
    w = mask_to_grid_weights(torch.from_numpy(masks[[0]]), state.input_size, pred.patch_size, state.grid)
    h_in, w_in = state.input_size
    core = w[0] >= REGION_MIN_COVER * (pred.patch_size * 90 / h_in) * (pred.patch_size * 200 / w_in)
    assert torch.equal(select[0], core)
    r, c = (int(v) for v in torch.nonzero(select[1])[0])
    expected = F.normalize(merged.clip_head.per_patch(head_tokens)[0, r, c], dim=-1)  # one token: its own
    assert torch.allclose(emb[2], expected, atol=1e-5)

    pred.mask_embeddings(masks, pooling="max")  # default: REGION_CONTEXT rings around the core
    ringed = seen[1]
    rows, cols = valid_grid(state.input_size, pred.patch_size)
    grown = F.max_pool2d(core[None, None].float(), 2 * REGION_CONTEXT + 1, 1, REGION_CONTEXT)[0, 0] > 0
    grown[rows:], grown[:, cols:] = False, False
    assert REGION_CONTEXT >= 1 and rows < state.grid  # the 90x200 image leaves padding rows to stay out of
    assert torch.equal(ringed[0], grown) and int(ringed[0].sum()) > int(core.sum())
    assert bool(ringed[1, r, c]) and int(ringed[1].sum()) > 1 and not ringed[1, rows:].any()


def test_label_masks_region_pooling_runs_the_head_on_the_covered_patches(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    pred = Predictor(merged)
    state = pred.set_image(image(90, 200))
    text = pred.text_embeddings(["left", "right"])
    seen = []

    def fake_region_pooled(tokens: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        assert tokens is state.tokens  # the cached pass, no new backbone run
        seen.append(regions.clone())
        left = regions[:, :, :4].flatten(1).sum(1) >= regions[:, :, 4:].flatten(1).sum(1)
        return torch.where(left[:, None], text[0], text[1])

    monkeypatch.setattr(merged.clip_head, "region_pooled", fake_region_pooled)
    masks = np.zeros((4, 90, 200), bool)
    masks[0, :, :60] = True
    masks[1, 10:80, 150:] = True
    masks[3, 45, 190] = True  # one pixel: covers no patch by half, so its most covered patch is used
    idx, _ = pred.label_masks(masks, ["left", "right"], pooling="region", context=0)
    assert idx.tolist() == [0, 1, -1, 1]
    regions = seen[0]
    assert regions.shape[0] == 3  # the empty mask never reaches the head
    w = mask_to_grid_weights(torch.from_numpy(masks[[0, 1, 3]]), state.input_size, pred.patch_size, state.grid)
    h_in, w_in = state.input_size
    patch_area = (pred.patch_size * 90 / h_in) * (pred.patch_size * 200 / w_in)
    assert torch.equal(regions[:2], w[:2] >= REGION_MIN_COVER * patch_area)
    assert int(regions[2].sum()) == 1 and bool(regions[2][w[2] == w[2].max()].all())


def test_mask_to_grid_weights_maps_pixels_to_patches() -> None:
    masks = torch.zeros(2, 90, 200, dtype=torch.bool)
    masks[0, :, :100] = True
    masks[1] = True
    wts = mask_to_grid_weights(masks, (58, 128), 16, 8)
    assert wts.shape == (2, 8, 8)
    assert wts[0].sum() == 90 * 100 and wts[1].sum() == 90 * 200
    assert wts[0, :, 4:].sum() == 0 and wts[1, 4:].sum() == 0 and (wts[1, :4] > 0).all()


# ----------------------------------------------------------------------------------- bad inputs
def test_image_variants(merged: SamClip) -> None:
    pred = Predictor(merged)
    rgb = image(40, 30)
    base = pred.set_image(rgb).sam_embeddings.float()
    gray = rgb[..., 0]
    np.testing.assert_array_equal(to_rgb_uint8(gray), np.repeat(gray[..., None], 3, 2))
    assert pred.set_image(gray).original_size == (40, 30)
    rgba = np.concatenate([rgb, np.zeros((40, 30, 1), np.uint8)], 2)
    torch.testing.assert_close(pred.set_image(rgba).sam_embeddings.float(), base)
    torch.testing.assert_close(pred.set_image(rgb.astype(np.uint16) * 257).sam_embeddings.float(), base)
    torch.testing.assert_close(pred.set_image(Image.fromarray(rgb)).sam_embeddings.float(), base)
    assert pred.set_image(Image.fromarray(rgba, "RGBA")).original_size == (40, 30)
    assert pred.set_image(Image.fromarray(gray, "L")).original_size == (40, 30)
    assert pred.set_image(torch.from_numpy(rgb)).input_size == (128, 96)


@pytest.mark.parametrize("size", [(1, 1), (10000, 10), (10, 10000)])
def test_extreme_sizes(merged: SamClip, size) -> None:  # noqa: ANN001
    pred = Predictor(merged)
    state = pred.set_image(np.full((*size, 3), 128, np.uint8))
    assert min(state.input_size) >= 1 and max(state.input_size) == 128
    masks, _, _ = pred.predict(point_coords=[[0, 0]], point_labels=[1])
    assert masks.shape == (3, *size)
    sem = pred.semantic_segment(LABELS[:2])
    assert sem.label_map.shape == size
    assert preprocess_shape(10000, 10, 128) == (128, 1)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((20, 20, 3), np.float32), "uint8"),
    (np.zeros((20, 20, 3), bool), "boolean"),
    (np.zeros((20, 20, 3), np.int32), "dtype"),
    (np.zeros((0, 20, 3), np.uint8), "empty"),
    (np.zeros((20, 0), np.uint8), "empty"),
    (np.zeros((3, 20, 20), np.uint8), "channel"),
    (np.zeros((20, 20, 3, 1), np.uint8), "shape"),
    ([[1, 2], [3, 4]], "uint8"),
])
def test_bad_images_raise_value_error(merged: SamClip, bad, match) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        Predictor(merged).set_image(bad)


def test_bad_prompts_and_labels(merged: SamClip) -> None:
    pred = Predictor(merged)
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict(point_coords=[[1, 1]], point_labels=[1])
    with pytest.raises(RuntimeError, match="set_image"):
        pred.classify(LABELS)
    pred.set_image(image())
    cases = [
        ({"point_coords": [[np.nan, 1]], "point_labels": [1]}, "NaN"),
        ({"point_coords": [[np.inf, 1]], "point_labels": [1]}, "NaN or infinite"),
        ({"point_coords": [[1, 1]], "point_labels": [2]}, "point_labels"),
        ({"point_coords": [[1, 1], [2, 2]], "point_labels": [1]}, "one label per point"),
        ({"point_coords": [[1, 1, 1]], "point_labels": [1]}, "Nx2"),
        ({"point_coords": [[1, 1]]}, "together"),
        ({"box": [1, 2, 3]}, "length-4"),
        ({"box": [50, 2, 3, 40]}, "x0 <= x1"),
        ({"mask_input": np.zeros((1, 16, 16))}, "1x32x32"),
        ({"point_coords": "ab", "point_labels": [1]}, "numeric"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            pred.predict(**kwargs)
    with pytest.raises(ValueError, match="batch sizes differ"):
        pred.predict_torch(torch.zeros(2, 1, 2), torch.ones(2, 1), boxes=torch.zeros(3, 4))
    for call in (pred.classify, pred.semantic_segment, lambda lab: pred.label_masks(np.ones((1, 90, 200), bool), lab)):
        with pytest.raises(ValueError, match="empty"):
            call([])
        with pytest.raises(ValueError, match="duplicate label 'ring'"):
            call(["ring", "star", "ring"])
        with pytest.raises(ValueError, match="single string"):
            call("ring")
    with pytest.raises(ValueError, match="masks must be NxHxW"):
        pred.label_masks(np.ones((1, 10, 10), bool), LABELS)
    with pytest.raises(ValueError, match="boolean"):
        pred.label_masks(np.full((1, 90, 200), 0.5), LABELS)
    with pytest.raises(ValueError, match="template"):
        pred.classify(LABELS, templates=["no placeholder"])
    with pytest.raises(ValueError, match="phrase"):
        pred.segment_text("")
    # what the text encoder reads alike is one class; text it cannot read is refused
    with pytest.raises(ValueError, match="the same class as 'star'"):
        pred.classify(["star", "ring", " Star "])
    with pytest.raises(ValueError, match="not valid text"):
        pred.classify(["st\udcffar", "ring"])
    with pytest.raises(ValueError, match="not valid text"):
        pred.segment_text("st\udcffar")
    # flags take True / False (or None where it means "the model's setting"), not any truthy value
    for call, name in ((lambda: pred.predict(point_coords=[[5, 5]], point_labels=[1], multimask_output="no"),
                        "multimask_output"),
                       (lambda: pred.predict(point_coords=[[5, 5]], point_labels=[1], return_logits="false"),
                        "return_logits"),
                       (lambda: pred.semantic_segment(LABELS, refine="no"), "refine"),
                       (lambda: pred.classify(LABELS, tta="no"), "tta"),
                       (lambda: pred.segment_text("star", verify=0), "verify")):
        with pytest.raises(TypeError, match=f"{name} must be True"):
            call()
    with pytest.raises(ValueError, match="must be a list of strings \\(in order\\), got a dict"):
        pred.classify({"star": 1, "ring": 2})
    with pytest.raises(ValueError, match="pooling must be one of"):
        pred.generate(pooling="bogus")  # refused even where no vocabulary would read it
    pred.predict(point_coords=[[5, 5]], point_labels=[1], multimask_output=np.bool_(False))  # numpy's bools are
    pred.classify(LABELS, tta=None)  # bools; None: the model's own setting
    for size in ("a", float("inf"), float("nan"), True, 20):
        with pytest.raises(ValueError, match="size must be a positive multiple of the patch size"):
            pred.set_image(image(32, 32), size=size)
    with pytest.raises(ValueError, match="no visible characters"):
        pred.classify(["\u200b\u200b", "ring"])  # zero-width spaces only
    with pytest.raises(ValueError, match="control characters"):
        pred.classify(["st\x00ar", "ring"])
    with pytest.raises(ValueError, match="control characters"):
        pred.segment_text("star\nring")
    # numbers out of range or of the wrong kind are errors, never silently a default or a no-op
    more = [
        (lambda: pred.predict_torch(torch.zeros(0, 1, 2), torch.ones(0, 1)), "empty prompt batch"),
        (lambda: pred.predict_torch(boxes=torch.zeros(0, 4)), "empty prompt batch"),
        (lambda: pred.classify(LABELS, size=0), "multiple of the patch size"),
        (lambda: pred.semantic_segment(LABELS, refine=True, max_points=2.5), "max_points must be an integer"),
        (lambda: pred.semantic_segment(LABELS, threshold=float("nan")), "threshold must be in"),
        (lambda: pred.segment_text("star", dedupe_iou=1.5), "dedupe_iou must be in"),
        (lambda: pred.generate(points_per_side=2.5), "points_per_side must be an integer"),
        (lambda: pred.generate(points_per_side=10**6), r"points_per_side must be in \[1, 256\]"),
        (lambda: pred.generate(nms_thresh=float("nan")), "nms_thresh must be in"),
        (lambda: pred.label_masks(np.ones((1, 90, 200), bool), LABELS, context=1.5), "context must be an integer"),
        (lambda: pred.label_masks(np.ones((1, 90, 200), bool), LABELS, min_cover=float("nan")), "min_cover"),
        (lambda: pred.set_image("scene.png"), "read_image"),
    ]
    for call, match in more:
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(TypeError, match="image index or an ImageState"):
        pred.select("a")


def test_label_case_variants_are_one_class(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    """segment_text drops the vocabulary entry the text encoder reads as the phrase: "Star" among ["star", "ring"]
    competes with "ring" only, as "star" among ["ring"] does."""
    pred = Predictor(merged)
    pred.set_image(image())
    seen, original = [], pred._class_logits
    monkeypatch.setattr(pred, "_class_logits",
                        lambda state, labels, *a: seen.append(labels) or original(state, labels, *a))
    pred.segment_text("Star", vocabulary=["star", "ring"])
    pred.segment_text("star", vocabulary=["ring", "STAR"])
    assert seen == [["Star", "ring"], ["star", "ring"]]


def test_segment_text_everything_candidates_name_the_everything_masks_once_per_image(merged: SamClip,
                                                                                    monkeypatch) -> None:  # noqa: ANN001
    """candidates="everything": each instance is one of generate()'s masks whose read names the phrase (against
    the vocabulary and the background); generate and the reads run once per image, whatever the phrase."""
    pred = Predictor(merged)
    pred.set_image(image())
    h, w = pred.original_size
    records = []  # the random tiny model's everything mode finds nothing confident: hand-made masks instead
    for k, (y0, x0, y1, x1) in enumerate([(0, 0, 40, 60), (30, 100, 90, 200), (50, 20, 90, 90), (5, 120, 40, 190),
                                          (0, 0, 90, 200), (60, 150, 80, 170)]):
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = True
        records.append({"segmentation": m, "predicted_iou": 0.95 - 0.05 * k, "point_coords": [[x0, y0]]})
    calls = []
    monkeypatch.setattr(pred, "generate", lambda *a, **k: calls.append(1) or records)
    # which class a random model's read names depends on the CPU's matrix kernels (the background won every mask
    # under AMX bf16): each label's text embedding is instead the read of one of the masks, which that mask's read
    # then names whatever the kernels (cos 1 against cos < 1)
    masks = np.stack([r["segmentation"] for r in records])
    reads, _ = pred.mask_embeddings(masks, pooling="max", tta=pred._mask_tta(None))
    own = {label: k for label, k in zip(LABELS, (1, 3, 5), strict=True)}
    monkeypatch.setattr(pred, "text_embeddings", lambda labels, templates=None: reads[[own[q] for q in labels]])
    found = {p: pred.segment_text(p, vocabulary=[q for q in LABELS if q != p], candidates="everything", pooling="max",
                                  dedupe_iou=1.0, dedupe_cover=1.0) for p in LABELS}  # no de-duplication
    assert len(calls) == 1
    for p, k in own.items():  # each designated mask is found as its label
        assert any(np.array_equal(masks[k], inst.mask) for inst in found[p])
    logits, empty = pred._mask_class_logits(torch.from_numpy(masks), LABELS, None, None, pooling="max")
    named = logits.argmax(-1)
    for j, p in enumerate(LABELS):  # exactly the masks whose read names the phrase
        ks = [next(k for k in range(len(masks)) if np.array_equal(masks[k], inst.mask)) for inst in found[p]]
        assert sorted(ks) == [k for k in range(len(masks)) if int(named[k]) == j + 1 and not empty[k]]
        assert all(inst.point == tuple(records[k]["point_coords"][0]) for k, inst in zip(ks, found[p], strict=True))
        assert [i.score for i in found[p]] == sorted((i.score for i in found[p]), reverse=True)
    pred.set_image(image())  # a new image: new candidates
    pred.segment_text("star", candidates="everything", pooling="max")
    assert len(calls) == 2
    with pytest.raises(ValueError, match="candidates must be one of"):
        pred.segment_text("star", candidates="all")
    with pytest.raises(ValueError, match="verify=False does not apply"):
        pred.segment_text("star", candidates="everything", verify=False)


def test_segment_text_everything_candidates_default_to_the_zoom_and_crop_reads(merged: SamClip,
                                                                              monkeypatch) -> None:  # noqa: ANN001
    pred = Predictor(merged)
    pred.set_image(image())
    mask = np.zeros(pred.original_size, bool)
    mask[10:30, 20:50] = True
    monkeypatch.setattr(pred, "generate", lambda *a, **k: [{"segmentation": mask, "predicted_iou": 0.9,
                                                            "point_coords": [[20, 10]]}])
    seen, original = [], pred.mask_embeddings
    monkeypatch.setattr(pred, "mask_embeddings", lambda m, **k: seen.append(k["pooling"]) or original(m, **k))
    pred.segment_text("star", vocabulary=["ring"], candidates="everything")
    assert seen[0] == "zoom+crop"  # (which reads "zoom" through mask_embeddings, then the crop)


def test_truncated_pil_image_is_a_value_error(merged: SamClip, tmp_path) -> None:  # noqa: ANN001
    from PIL import Image

    Image.fromarray(image()).save(tmp_path / "scene.png")
    data = (tmp_path / "scene.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with Image.open(tmp_path / "cut.png") as im, pytest.raises(ValueError, match="cannot decode the PIL image"):
        Predictor(merged).set_image(im)


# ------------------------------------------------------------------------------------ plain SAM
def test_plain_sam_predictor(plain_sam: samclip.Sam) -> None:
    pred = Predictor(plain_sam)
    calls, handle = count_backbone(plain_sam)
    try:
        pred.set_image(image(70, 100))
        masks, scores, low = pred.predict(point_coords=[[50, 30]], point_labels=[1])
        out = pred.generate(points_per_side=4, pred_iou_thresh=-1e9, stability_score_thresh=0.0)
    finally:
        handle.remove()
    assert calls[0] == 1
    assert masks.shape == (3, 70, 100) and scores.shape == (3,) and low.shape == (3, 32, 32)
    assert isinstance(out, list)
    for r in out:
        assert set(r) == {"segmentation", "area", "bbox", "predicted_iou", "stability_score", "point_coords",
                          "crop_box"}
        x, y, bw, bh = r["bbox"]
        ys, xs = np.nonzero(r["segmentation"])
        assert (x, y, x + bw, y + bh) == (xs.min(), ys.min(), xs.max(), ys.max())
    for task in (lambda: pred.classify(LABELS), lambda: pred.semantic_segment(LABELS),
                 lambda: pred.generate(LABELS), lambda: pred.segment_text("star")):
        with pytest.raises(ValueError, match="no CLIP head"):
            task()


def fake_decode(paint):  # noqa: ANN001, ANN201
    """A stand-in for ``model.decode`` on sam-tiny's 32x32 low-res grid: 3 masks per prompt, all -10 until
    ``paint(out, point_coords)`` draws them and returns the Nx3 predicted IoUs."""

    def decode(emb, point_coords=None, point_labels=None, boxes=None, mask_input=None, multimask_output=True,  # noqa: ANN001, ANN202
               image_cache=None):  # noqa: ANN001
        out = torch.full((point_coords.shape[0], 3, 32, 32), -10.0)
        return out, paint(out, point_coords)

    return decode


def test_generate_filters_and_nms(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    pred = Predictor(merged)
    pred.set_image(image(64, 128))

    def paint(out, point_coords):  # noqa: ANN001, ANN202
        n = point_coords.shape[0]
        left = point_coords[:, 0, 0] < 64
        out[left, 0, :8, :16] = 10.0  # a confident, stable mask for every left point (duplicates)
        out[:, 1] = 0.5  # unstable: logits within +-1 of the threshold everywhere
        out[~left, 2, :8, 16:] = 10.0
        return torch.tensor([0.9, 0.95, 0.3]).expand(n, 3).clone()

    monkeypatch.setattr(merged, "decode", fake_decode(paint))
    out = pred.generate(points_per_side=4, pred_iou_thresh=0.7, stability_score_thresh=0.8)
    assert len(out) == 1  # right masks fail the IoU filter, unstable ones the stability filter; NMS merges
    r = out[0]
    assert r["predicted_iou"] == pytest.approx(0.9, abs=1e-6) and r["stability_score"] > 0.95
    assert r["segmentation"][:30, :60].all() and not r["segmentation"][:, 70:].any()
    assert not r["segmentation"][36:].any()
    assert r["point_coords"][0][0] < 64
    assert len(pred.generate(points_per_side=4, min_area=10**6)) == 0


@pytest.mark.parametrize("chunk", [1, 3])
def test_semantic_segment_map_alone_is_the_same_map(merged: SamClip, monkeypatch, chunk: int) -> None:  # noqa: ANN001
    """return_logits=False: the same label map, made a few classes at a time (no (K+1)xHxW logits), coarse and
    refined, with and without background; the result says it holds no logits."""
    import samclip.predictor.semantic as semantic

    monkeypatch.setattr(semantic, "ARGMAX_CHUNK", chunk)
    pred = Predictor(merged, bf16=False)
    pred.set_image(image(70, 110))
    labels = ["star", "ring", "heart", "cross", "arrow"]
    for kw in ({}, {"background": False}, {"refine": True}, {"refine": True, "background": False},
               {"refine": True, "relabel": False}):
        full = pred.semantic_segment(labels, **kw)
        alone = pred.semantic_segment(labels, **kw, return_logits=False)
        assert alone.logits is None and np.array_equal(alone.label_map, full.label_map), kw
        if not (kw.get("refine") and kw.get("background") is False):  # there unrefined pixels keep their coarse class
            assert np.array_equal(full.label_map, full.logits.argmax(0)), kw
    with pytest.raises(ValueError, match="label map alone"):
        _ = alone.probs


def test_refinement_upsamples_a_few_masks_at_a_time(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    """The refinement's masks (and segment_text's) are made at the image's size a few at a time (every point's
    float logits at full size took points x pixels x 4 bytes); the same maps and instances either way."""
    import samclip.predictor.base as base
    import samclip.predictor.semantic as semantic

    pred = Predictor(merged, bf16=False)
    pred.set_image(image(70, 110))
    labels = ["star", "ring", "heart", "cross", "arrow"]
    kw = {"refine": True, "threshold": 0.0, "max_points": 3}
    want = pred.semantic_segment(labels, **kw)
    want_text = pred.segment_text("star", vocabulary=labels[1:], threshold=0.0)
    sizes = []
    real = Predictor._full_size_logits
    monkeypatch.setattr(Predictor, "_full_size_logits", lambda self, st, low: sizes.append(len(low)) or real(
        self, st, low))
    for module in (base, semantic):
        monkeypatch.setattr(module, "POSTPROCESS_BATCH", 2)
    got = pred.semantic_segment(labels, **kw)
    got_text = pred.segment_text("star", vocabulary=labels[1:], threshold=0.0)
    assert sizes and max(sizes) <= 2
    assert np.array_equal(got.label_map, want.label_map) and np.array_equal(got.logits, want.logits)
    assert [(i.score, i.mask.tobytes()) for i in got_text] == [(i.score, i.mask.tobytes()) for i in want_text]
    coords = torch.tensor([[10.0, 10.0], [60.0, 30.0], [100.0, 60.0], [30.0, 50.0], [80.0, 10.0]])
    sizes.clear()
    low, iou, masks = pred._single_point_masks(pred.state, coords)  # 5 points: 2 + 2 + 1
    assert sizes == [2, 2, 1] and masks.shape == (5, 70, 110)
    assert torch.equal(masks, real(pred, pred.state, low)[:, 0] > merged.mask_threshold)


def test_generate_max_masks_makes_only_the_kept_masks_at_full_size(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    """``max_masks``: the first k of the full list (by predicted IoU, after ``min_area``), and only about k masks
    are upsampled to the image and labelled (a large image with hundreds of masks ran out of memory)."""
    pred = Predictor(merged)
    pred.set_image(image(64, 128))

    def paint(out, point_coords):  # noqa: ANN001, ANN202
        for i, (x, y) in enumerate((point_coords[:, 0] / 4).long().tolist()):  # a block around each point
            size = 1 if i % 3 == 0 else 2  # every third one small (9 px at the image's size)
            out[i, 0, max(y - size, 0) : y + size, max(x - size, 0) : x + size] = 10.0
        return torch.tensor([[0.99 - 0.01 * i, 0.1, 0.1] for i in range(len(out))])

    monkeypatch.setattr(merged, "decode", fake_decode(paint))
    upsampled = []
    real_post = merged.postprocess_masks
    monkeypatch.setattr(merged, "postprocess_masks", lambda m, *a: upsampled.append(len(m)) or real_post(m, *a))
    args = {"points_per_side": 8, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.5}
    every = pred.generate(**args)
    assert len(every) > 20 and sum(upsampled) == len(every)  # without max_masks all are made at full size
    for k, min_area in ((5, 0), (17, 0), (4, 20)):
        upsampled.clear()
        want = [r for r in every if r["area"] >= min_area][:k]
        got = pred.generate(**args, max_masks=k, min_area=min_area)
        assert [r["predicted_iou"] for r in got] == [r["predicted_iou"] for r in want]
        assert all(np.array_equal(a["segmentation"], b["segmentation"]) for a, b in zip(got, want))
        assert sum(upsampled) <= 16 * -(-k // 16) + (16 if min_area else 0) < len(every)
    labelled = []
    real_label = pred.label_masks
    monkeypatch.setattr(pred, "label_masks", lambda masks, *a, **kw: labelled.append(len(masks)) or real_label(
        masks, *a, **kw))
    assert len(pred.generate(["star", "ring"], **args, max_masks=3)) == 3 and labelled == [3]
    with pytest.raises(ValueError, match="max_masks"):
        pred.generate(max_masks=0)


def test_crop_layer_masks_stay_at_crop_size_until_kept(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    """With crop layers each crop's masks are held at the crop's size and only the kept ones are pasted at the
    image's size (every crop's masks were made full size first: 11 GB for 48 masks of a 40 Mpx image)."""
    import samclip.predictor.everything as everything

    pred = Predictor(merged, bf16=False)
    pred.set_image(image(96, 160))
    full_size = []

    class Torch:  # the module's torch, recording the image-sized mask stacks it allocates
        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(torch, name)

        def zeros(self, *shape, **kw):  # noqa: ANN002, ANN003, ANN202
            if tuple(shape[1:]) == (96, 160):
                full_size.append(shape[0])
            return torch.zeros(*shape, **kw)

    monkeypatch.setattr(everything, "torch", Torch())
    out = pred.generate(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=1,
                        max_masks=6)
    assert out and len(out) <= 6 and all(r["segmentation"].shape == (96, 160) for r in out)
    assert sum(full_size) == len(out)  # image-sized: the kept masks only


def test_generate_output_modes_and_crop_boxes_follow_segment_anything(merged: SamClip) -> None:
    """``output_mode``: the same masks as run-length encodings (segment-anything's uncompressed form and COCO's
    compressed one); every record has a ``crop_box`` (XYWH): the whole image, or with crop layers one of the
    crops, which holds its mask."""
    from samclip.inference.everything import crop_boxes
    from samclip.inference.rle import coco_rle_decode, uncompressed_rle

    pred = Predictor(merged, bf16=False)
    pred.set_image(image(64, 128))
    args = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "max_masks": 12}
    masks = pred.generate(**args)
    assert masks and all(r["crop_box"] == [0, 0, 128, 64] for r in masks)
    for mode in ("uncompressed_rle", "coco_rle"):
        encoded = pred.generate(**args, output_mode=mode)
        assert [r["area"] for r in encoded] == [r["area"] for r in masks]
        for r, m in zip(encoded, masks):
            assert r["segmentation"]["size"] == [64, 128]
            assert isinstance(r["segmentation"]["counts"], list if mode == "uncompressed_rle" else str)
            assert np.array_equal(coco_rle_decode(r["segmentation"]), m["segmentation"])
    starts_on = np.zeros((3, 4), bool)
    starts_on[0, 0] = starts_on[2, 3] = True
    rle = uncompressed_rle(starts_on)  # column-major runs, the first of 0s (empty here)
    assert rle == {"size": [3, 4], "counts": [0, 1, 10, 1]}
    layered = pred.generate(**args, crop_n_layers=1)
    boxes = {tuple(b) for b, _ in crop_boxes((64, 128), 1)}
    for r in layered:
        x, y, w, h = r["crop_box"]
        assert (x, y, x + w, y + h) in boxes
        inside = np.zeros((64, 128), bool)
        inside[y : y + h, x : x + w] = True
        assert not (r["segmentation"] & ~inside).any()
    with pytest.raises(ValueError, match="output_mode"):
        pred.generate(output_mode="rle")


@pytest.mark.parametrize("size", [(90, 200), (256, 256)])
def test_crop_boxes_tile_the_image_with_overlapping_crops(size) -> None:
    from samclip.inference.everything import CROP_OVERLAP_RATIO, crop_boxes

    h, w = size
    crops = crop_boxes(size, 2)
    assert crops[0] == ((0, 0, w, h), 0) and [layer for _, layer in crops] == [0] + [1] * 4 + [2] * 16
    for layer in (1, 2):
        n, cover = 2**layer, np.zeros((h, w), int)
        boxes = [b for b, lay in crops if lay == layer]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            cover[y0:y1, x0:x1] += 1
        assert cover.min() >= 1  # every pixel in some crop
        overlap = int(CROP_OVERLAP_RATIO * min(h, w) * 2 / n)
        assert boxes[0][2] - boxes[1][0] == overlap  # neighbours share `overlap` columns
        assert boxes[-1][2:] == (w, h)
    for tiny in ((1, 1), (3, 3), (2, 5)):  # no empty or repeated crop on images of a few pixels
        boxes = [b for b, _ in crop_boxes(tiny, 2)]
        assert all(x0 < x1 and y0 < y1 for x0, y0, x1, y1 in boxes) and boxes[0] == (0, 0, tiny[1], tiny[0])
        assert len(set(boxes)) == len(boxes)


def test_mask_areas_sum_in_blocks(monkeypatch) -> None:  # noqa: ANN001
    import samclip.prompts as prompts

    masks = torch.rand(5, 37, 53, generator=torch.Generator().manual_seed(0)) > 0.6
    want = masks.flatten(1).sum(1)
    monkeypatch.setattr(prompts, "AREA_BLOCK_ELEMENTS", 5 * 100)  # 100 pixels of each mask per sum: 20 blocks
    assert torch.equal(prompts.mask_areas(masks), want) and prompts.mask_areas(masks[:0]).shape == (0,)


def test_box_nms_is_greedy_and_takes_ious_a_block_at_a_time(monkeypatch) -> None:  # noqa: ANN001
    """The kept boxes are greedy NMS's (a brute-force reference), and no IoU matrix of N x N is made: 6000
    candidates (points_per_side 64 with low thresholds gives ~10,000) take blocks of ~16M entries."""
    import samclip.inference.everything as ev

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 60], 1)
    scores = torch.rand(300, generator=g)
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    want = []
    for i in order:  # the definition, one pair at a time
        if all(ev.box_iou(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= 0.5 for j in want):
            want.append(i)
    assert ev.box_nms(boxes, scores, 0.5).tolist() == want
    shapes = []
    real = ev.box_iou
    monkeypatch.setattr(ev, "box_iou", lambda a, b: shapes.append((len(a), len(b))) or real(a, b))
    n = 6000
    xy = torch.rand(n, 2, generator=g) * 4000
    ev.box_nms(torch.cat([xy, xy + 20], 1), torch.rand(n, generator=g), 0.7)
    assert sum(r for r, _ in shapes) == n and max(r * c for r, c in shapes) <= (1 << 24)


def test_crop_edge_filter_and_crop_nms() -> None:
    from samclip.inference.everything import crop_nms, near_inner_crop_edge

    crop, size = (0, 0, 100, 80), (160, 200)  # the top-left crop: its right and bottom edges are inner
    boxes = torch.tensor([[10, 10, 98, 40], [0, 0, 30, 30], [30, 20, 60, 50], [10, 60, 40, 79]], dtype=torch.float)
    assert near_inner_crop_edge(boxes, crop, size).tolist() == [True, False, False, True]
    # the same object found in the whole image (area 32000) and in a crop (8000): the crop's mask stays
    boxes = torch.tensor([[10, 10, 50, 50], [11, 10, 50, 51], [100, 100, 120, 120]], dtype=torch.float)
    keep = crop_nms(boxes, torch.tensor([32000.0, 8000.0, 32000.0]), torch.tensor([0.99, 0.8, 0.9]), 0.7)
    assert keep.tolist() == [2, 1]  # by score, the whole image's duplicate gone


def test_generate_with_crop_layers_encodes_each_crop_and_maps_masks_back(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    """crop_n_layers=1: four more backbone passes (one per crop); every mask comes back at the image's size,
    holding its prompt point (original pixels), sorted by predicted IoU; the crops add finer masks."""
    pred = Predictor(merged)
    pred.set_image(image(96, 160))
    low = 32

    def decode(emb, point_coords=None, point_labels=None, boxes=None, mask_input=None, multimask_output=True,  # noqa: ANN001, ANN202
               image_cache=None):  # noqa: ANN001
        n = point_coords.shape[0]  # a confident 3x3-cell square around each point, one output per point
        out = torch.full((n, 3, low, low), -10.0)
        cells = (point_coords[:, 0] / (merged.img_size / low)).long()
        for i, (cx, cy) in enumerate(cells.tolist()):
            out[i, 0, max(0, cy - 1) : cy + 2, max(0, cx - 1) : cx + 2] = 10.0
        iou = torch.tensor([0.9, 0.1, 0.1]).expand(n, 3) - torch.arange(n)[:, None] * 1e-3
        return out, iou.clone()

    monkeypatch.setattr(merged, "decode", decode)
    plain = pred.generate(points_per_side=4)
    calls, handle = count_backbone(merged)
    try:
        out = pred.generate(points_per_side=4, crop_n_layers=1)
    finally:
        handle.remove()
    assert calls[0] == 4 and len(out) > len(plain) > 0
    for r in out:
        m, (x, y) = r["segmentation"], r["point_coords"][0]
        assert m.shape == (96, 160) and m[int(y), int(x)] and r["area"] == int(m.sum())
        ys, xs = np.nonzero(m)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
    assert [r["predicted_iou"] for r in out] == sorted((r["predicted_iou"] for r in out), reverse=True)
    assert any(r["area"] < min(p["area"] for p in plain) for r in out)  # the crops' finer masks
    with pytest.raises(ValueError, match="crop_n_layers"):
        pred.generate(crop_n_layers=5)
    with pytest.raises(ValueError, match="crop_overlap_ratio"):
        pred.generate(crop_n_layers=1, crop_overlap_ratio=1.5)


# -------------------------------------------------------------------------------------- helpers
def _bfs_count(mask: np.ndarray) -> int:
    seen = np.zeros_like(mask)
    n = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        n += 1
        q = deque([(y, x)])
        seen[y, x] = True
        while q:
            cy, cx = q.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        q.append((ny, nx))
    return n


def test_connected_components_matches_bfs() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((rng.integers(1, 30), rng.integers(1, 30))) < rng.uniform(0.2, 0.7)
        labels, n = connected_components(mask)
        assert n == _bfs_count(mask)
        assert ((labels > 0) == mask).all() and set(np.unique(labels[mask])) == set(range(1, n + 1))
    spiral = np.zeros((9, 9), bool)
    spiral[0, :] = spiral[:, 8] = spiral[8, :] = spiral[2:, 0] = spiral[2, :7] = True
    assert connected_components(spiral)[1] == 1
    diag = np.eye(4, dtype=bool)
    assert connected_components(diag, 8)[1] == 1 and connected_components(diag, 4)[1] == 4
    assert connected_components(np.zeros((3, 3), bool))[1] == 0


def test_nms_stability_and_grid() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=torch.float)
    keep = box_nms(boxes, torch.tensor([0.5, 0.9, 0.3, 0.1]), 0.7)
    assert keep.tolist() == [1, 2]
    logits = torch.tensor([[[2.0, 0.5], [-0.5, -2.0]]])
    assert stability_score(logits, 0.0, 1.0).item() == pytest.approx(1 / 3)
    assert stability_score(torch.full((1, 2, 2), -5.0), 0.0, 1.0).item() == 0.0
    grid = build_point_grid(4)
    assert grid.shape == (16, 2) and grid.min() == 0.125 and grid.max() == 0.875


def test_clip_tasks_read_the_models_own_sizes_and_map_points_back(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    """With clip_size / semseg_size != the SAM frame, CLIP-head tasks use one extra cached pass at that
    size, the SAM head still decodes on the SAM-size pass, and refinement points are mapped between frames."""
    model = copy.deepcopy(merged)
    model.config = model.config.replace(clip_size=64, semseg_size=64)  # sam-tiny's frame is 128
    pred = Predictor(model)
    calls, handle = count_backbone(model)
    state = pred.set_image(image(100, 100))
    probs = pred.classify(["star", "ring"])
    sem = pred.semantic_segment(["star", "ring"])
    assert calls[0] == 2 and set(state.other_sizes) == {(64, False)}  # one SAM-size pass + one 64 px pass, reused
    assert probs.shape == (2,) and sem.label_map.shape == (100, 100)
    handle.remove()
    clip_state = state.other_sizes[(64, False)]
    g = clip_state.grid
    assert g == 4 and state.grid == 8

    def fake_logits(st, labels, templates, background, refine=False):  # noqa: ANN001, ANN202
        assert st is clip_state
        out = torch.full((len(labels) + 1, g, g), -5.0)
        out[0] = 5.0
        out[1, 1, 0] = 10.0  # "star" wins at patch row 1, column 0 of the 64 px grid
        return out

    seen = {}

    def fake_decode(st, coords, labels, boxes, mask_in, multimask):  # noqa: ANN001, ANN202
        seen.update(state=st, coords=coords.clone(), labels=labels.clone(), mask_in=mask_in)
        return torch.zeros(coords.shape[0], 1, 4 * st.grid, 4 * st.grid), torch.zeros(coords.shape[0], 1)

    monkeypatch.setattr(pred, "_class_logits", fake_logits)
    monkeypatch.setattr(pred, "_decode", fake_decode)
    for relabel in (False, True):
        pred.semantic_segment(["star", "ring"], refine=True, relabel=relabel)
        assert seen["state"] is state  # the SAM head decodes on the SAM-size pass
        first = seen["coords"][0, 0]
        # patch (1, 0) of a 64 px frame is centred at (8, 24) there, i.e. (16, 48) in the 128 px frame
        assert torch.allclose(first, torch.tensor([16.0, 48.0]))
        if relabel:  # one point per decode, no mask input
            assert seen["coords"].shape == (1, 1, 2) and seen["mask_in"] is None
        else:
            assert seen["mask_in"].shape[-1] == 4 * state.grid


def _fake_refinement(pred: Predictor, monkeypatch) -> dict[str, float]:  # noqa: ANN001
    """Set a 128x128 image; the coarse map says "star" at one patch only, and every decode returns the left
    half of the frame with predicted IoUs (0.1, iou["value"], 0.2). Returns the mutable ``iou`` (0.9)."""
    g = pred.set_image(image(128, 128)).grid
    iou = {"value": 0.9}

    def fake_logits(st, labels, templates, background, refine=False):  # noqa: ANN001, ANN202
        out = torch.full((len(labels) + 1, g, g), -5.0)
        out[0] = 5.0
        out[1, 1, 0] = 10.0
        return out

    left = torch.full((4 * g, 4 * g), -10.0)
    left[:, : 2 * g] = 10.0

    def fake_decode(st, coords, labels, boxes, mask_in, multimask):  # noqa: ANN001, ANN202
        n = coords.shape[0]
        return left.expand(n, 3, -1, -1).clone(), torch.tensor([[0.1, iou["value"], 0.2]]).expand(n, -1)

    monkeypatch.setattr(pred, "_class_logits", fake_logits)
    monkeypatch.setattr(pred, "_decode", fake_decode)
    return iou


def test_relabelled_refinement_names_each_mask_by_its_own_read(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    """refine=True, relabel=True: the coarse map only places the points; each point's SAM-head mask takes
    the class its CLIP-head read matches (background: dropped), masks below REFINE_MIN_IOU are dropped."""
    from samclip.predictor import REFINE_MIN_IOU

    pred = Predictor(merged)
    iou = _fake_refinement(pred, monkeypatch)
    txt = {"star": 0, "ring": 1}
    read = {"as": "ring"}

    def fake_mask_embeddings(masks, **kwargs):  # noqa: ANN001, ANN003, ANN202
        assert masks.shape == (1, 128, 128) and masks[:, :, :64].all() and not masks[:, :, 64:].any()
        emb = pred._background_embedding() if read["as"] == "background" else \
            pred.text_embeddings(["star", "ring"])[txt[read["as"]]][None]
        return emb, torch.zeros(1, dtype=torch.bool)

    monkeypatch.setattr(pred, "mask_embeddings", fake_mask_embeddings)
    sem = pred.semantic_segment(["star", "ring"], refine=True)
    assert (sem.label_map[:, :64] == 2).all() and (sem.label_map[:, 64:] == 0).all()  # named "ring" by its read
    published = pred.semantic_segment(["star", "ring"], refine=True, relabel=False)
    assert (published.label_map[:, :64] == 1).all()  # the published composition keeps the coarse class
    read["as"] = "background"
    assert (pred.semantic_segment(["star", "ring"], refine=True).label_map == 0).all()
    read["as"], iou["value"] = "ring", REFINE_MIN_IOU - 0.01
    assert (pred.semantic_segment(["star", "ring"], refine=True).label_map == 0).all()


def test_refinement_crop_margin_reads_unsure_masks_from_their_crops(merged: SamClip, monkeypatch) -> None:  # noqa: ANN001
    """crop_margin: a mask whose one-pass read is unsure (top-2 probability margin below it) is also read from
    its crop, and named by both reads (pooling="max+crop"); sure masks are not cropped."""
    pred = Predictor(merged)
    _fake_refinement(pred, monkeypatch)
    star, ring = pred.text_embeddings(["star", "ring"])
    crops = []

    def fake_pooled_masks(st, masks, pooling, min_cover, context):  # noqa: ANN001, ANN202 - the one-pass read
        read = torch.nn.functional.normalize(0.3 * star + ring, dim=-1)
        return read.expand(len(masks), -1), torch.zeros(len(masks), dtype=torch.bool)

    def fake_crops(masks, mirrored=False):  # noqa: ANN001, ANN202
        crops.append(masks.clone())
        return star.expand(len(masks), -1), torch.zeros(len(masks), dtype=torch.bool)

    monkeypatch.setattr(pred, "_pooled_masks", fake_pooled_masks)
    monkeypatch.setattr(pred, "_crop_embeddings", fake_crops)
    assert (pred.semantic_segment(["star", "ring"], refine=True).label_map[:, :64] == 2).all()  # the read: ring
    assert not crops
    sem = pred.semantic_segment(["star", "ring"], refine=True, crop_margin=1.0)
    assert len(crops) == 1 and crops[0].shape == (1, 128, 128) and crops[0][:, :, :64].all()
    assert not crops[0][:, :, 64:].any()
    assert (sem.label_map[:, :64] == 1).all() and (sem.label_map[:, 64:] == 0).all()  # the crop tips it: star
    assert (pred.semantic_segment(["star", "ring"], refine=True, crop_margin=1e-9).label_map[:, :64] == 2).all()
    assert len(crops) == 1  # a sure read is not cropped
    with pytest.raises(ValueError, match="crop_margin"):
        pred.semantic_segment(["star", "ring"], refine=True, crop_margin=1.5)
    with pytest.raises(ValueError, match="relabel=True"):
        pred.semantic_segment(["star", "ring"], refine=True, relabel=False, crop_margin=0.5)


def test_mask_labels_read_the_label_size_pass(merged: SamClip) -> None:
    """config.label_size (0: clip_size) is the pass max / region pooling read; classification stays at
    clip_size and mean pooling at semseg_size."""
    model = copy.deepcopy(merged)
    model.config = model.config.replace(clip_size=64, semseg_size=64, label_size=128)  # sam-tiny's frame: 128
    pred = Predictor(model)
    state = pred.set_image(image(100, 100))
    masks = np.zeros((1, 100, 100), bool)
    masks[0, 20:60, 10:50] = True
    emb, _ = pred.mask_embeddings(masks, pooling="max")
    assert set(state.other_sizes) == set()  # max pooling used the SAM-size pass itself
    assert pred._clip_state(None, "label") is state and pred._clip_state(None, "classify").frame == 64
    same = copy.deepcopy(merged)
    same.config = same.config.replace(clip_size=128, semseg_size=64)  # label_size 0: clip_size = the SAM frame
    other = Predictor(same)
    other.set_image(image(100, 100))
    assert torch.allclose(emb, other.mask_embeddings(masks, pooling="max")[0], atol=1e-5)
    pred.mask_embeddings(masks, pooling="mean")
    assert set(state.other_sizes) == {(64, False)}
    with pytest.raises(ValueError, match="multiples of the patch size"):
        model.config.replace(label_size=50)


def test_mask_embeddings_shapes_empty_rows_and_pooling_choice(merged: SamClip) -> None:
    pred = Predictor(merged)
    pred.set_image(image(90, 200))
    masks = np.zeros((3, 90, 200), bool)
    masks[0, :, :60] = True
    masks[2, 40:60, 100:150] = True
    for pooling in ("max", "region", "mean"):
        emb, empty = pred.mask_embeddings(masks, pooling=pooling)
        assert emb.shape == (3, merged.clip_head.config.out_dim) and empty.tolist() == [False, True, False]
        assert torch.allclose(emb[[0, 2]].norm(dim=-1), torch.ones(2), atol=1e-4) and (emb[1] == 0).all()
    region, _ = pred.mask_embeddings(masks, pooling="region")
    mean, _ = pred.mask_embeddings(masks, pooling="mean")
    assert not torch.allclose(region[0], mean[0], atol=1e-3)  # two different poolings
    emb, empty = pred.mask_embeddings(np.zeros((0, 90, 200), bool))
    assert emb.shape == (0, merged.clip_head.config.out_dim) and empty.shape == (0,)
    with pytest.raises(ValueError, match="NxHxW"):
        pred.mask_embeddings(np.ones((2, 10, 10), bool))


def test_crop_pooling_encodes_each_masks_crop_with_the_merged_model(merged: SamClip) -> None:
    """pooling="crop": each mask's grey-outside square crop at clip_size goes through
    the whole merged model; empty masks get zero rows and never reach it."""

    pred = Predictor(merged, bf16=False)
    img = image(90, 200)
    pred.set_image(img)
    masks = np.zeros((3, 90, 200), bool)
    masks[0, 10:50, 5:60] = True
    masks[2, 40:80, 120:190] = True
    emb, empty = pred.mask_embeddings(masks, pooling="crop")
    assert empty.tolist() == [False, True, False] and (emb[1] == 0).all()
    size = merged.config.clip_size
    crops = mask_crops(img, masks[[0, 2]], size)
    assert crops.shape == (2, size, size, 3) and (crops[0, 0, 0] == 128).all()  # grey outside the mask
    with torch.no_grad():
        x = torch.from_numpy(crops).permute(0, 3, 1, 2)
        want = merged.encode_image(merged.preprocess(x, size), normalize=True)
    assert torch.allclose(emb[[0, 2]], want, atol=1e-4)
    idx, probs = pred.label_masks(masks, ["star", "ring"], pooling="crop")
    assert idx[1] == -1 and probs.shape == (3, 2) and np.allclose(probs[[0, 2]].sum(1), 1, atol=1e-5)


def test_bf16_predictor_follows_fp32(merged: SamClip) -> None:
    """bf16=True (what "auto" picks on AMX / AVX512-BF16 CPUs) runs every task in bfloat16 autocast with fp32
    outputs that follow the fp32 Predictor's: the same shapes and dtypes, close embeddings and probabilities,
    nearly the same masks."""
    img = image(90, 200, seed=3)
    outs = {}
    for bf16 in (False, True):
        pred = Predictor(merged, bf16=bf16)
        assert pred.bf16 is bf16
        pred.set_image(img)
        masks, scores, low = pred.predict(box=np.array([10, 10, 120, 80]), multimask_output=False)
        outs[bf16] = (masks, scores, low, pred.image_embedding(), pred.classify(LABELS),
                      pred.semantic_segment(LABELS).probs)
    (m32, s32, l32, e32, p32, sem32), (m16, s16, l16, e16, p16, sem16) = outs[False], outs[True]
    assert m16.shape == m32.shape == (1, 90, 200) and l16.dtype == l32.dtype and e16.dtype == torch.float32
    assert np.abs(l16 - l32).max() < 0.1 * max(np.abs(l32).max(), 1.0)
    assert (m16 == m32).mean() > 0.97 and np.abs(s16 - s32).max() < 0.05
    assert F.cosine_similarity(e16, e32).min() > 0.99 and np.abs(np.asarray(p16) - np.asarray(p32)).max() < 0.05
    # a random head's class probabilities are near ties, so compare them rather than their argmax
    assert sem16.shape == sem32.shape == (4, 90, 200) and np.abs(sem16 - sem32).max() < 0.02


def test_bf16_predictor_decodes_small_embeddings_in_fp32_large_ones_mixed(merged: SamClip) -> None:
    """A bf16 Predictor decodes one prompt on a tiny model's embeddings in fp32 (faster there) and, from
    ``mixed_decode_min_elements`` (embedding elements x prompts) up, in mixed precision (bf16 image tokens):
    either way it follows the fp32 Predictor, for a point, a box, a mask input and a batch of prompts."""
    img = image(90, 200, seed=4)
    ref = Predictor(merged, bf16=False)
    ref.set_image(img)
    batch = dict(point_coords=torch.tensor([[[40.0, 30.0]], [[150.0, 60.0]]]), point_labels=torch.ones(2, 1))
    fp32, bf16 = torch.float32, torch.bfloat16
    # default: everything in fp32 on this tiny model; 0: everything mixed; 2x the embedding: the 2-prompt batch
    for threshold, dtypes in ((None, {fp32}), (0, {bf16}), ("two prompts", {fp32, bf16})):
        pred = Predictor(merged, bf16=True)
        state = pred.set_image(img)
        if threshold is not None:
            pred.mixed_decode_min_elements = 0 if threshold == 0 else 2 * state.sam_embeddings[0].numel()
        for prompt in (dict(point_coords=np.array([[40.0, 30.0]]), point_labels=np.array([1])),
                       dict(box=np.array([10, 10, 120, 80]))):
            m16, s16, l16 = pred.predict(**prompt)
            m32, s32, l32 = ref.predict(**prompt)
            assert m16.shape == m32.shape and l16.dtype == l32.dtype
            assert np.abs(l16 - l32).max() < 0.1 * max(np.abs(l32).max(), 1.0) and np.abs(s16 - s32).max() < 0.05
            assert (m16 == m32).mean() > 0.97
            with_mask = pred.predict(**prompt, mask_input=l16[:1], multimask_output=False)[2]
            ref_mask = ref.predict(**prompt, mask_input=l32[:1], multimask_output=False)[2]
            assert np.abs(with_mask - ref_mask).max() < 0.1 * max(np.abs(ref_mask).max(), 1.0)
        got, ref_got = pred.predict_torch(**batch)[2], ref.predict_torch(**batch)[2]
        assert got.shape == ref_got.shape == (2, 3, *got.shape[-2:])
        assert (got - ref_got).abs().max() < 0.1 * max(ref_got.abs().max().item(), 1.0)
        assert set(state.decoder) == dtypes


@pytest.mark.parametrize("bf16", [False, True])
def test_predict_without_prompts(merged: SamClip, bf16: bool) -> None:
    """As SAM's predictor: no prompt at all decodes one prompt-less query (the no-mask dense embedding only)."""
    pred = Predictor(merged, bf16=bf16)
    pred.set_image(image(90, 200, seed=5))
    masks, scores, low = pred.predict()
    assert masks.shape == (3, 90, 200) and scores.shape == (3,) and low.shape[0] == 3
    assert pred.predict_torch()[0].shape == (1, 3, 90, 200)


def test_segment_text_duplicates_by_iou_or_cover() -> None:
    """A mask is a duplicate of a kept one when their IoU is high, or when most of the smaller one lies in the
    other (a part of the same object prompted from a second region)."""
    from samclip.predictor.text_instances import is_duplicate

    big = torch.zeros(40, 40, dtype=torch.bool)
    big[0:20, 0:20] = True
    part = torch.zeros(40, 40, dtype=torch.bool)
    part[12:22, 0:10] = True  # 8 of its 10 rows inside ``big``: 80% covered, IoU 0.2
    apart = torch.zeros(40, 40, dtype=torch.bool)
    apart[16:26, 0:10] = True  # 40% covered
    assert is_duplicate(part, big[None], 0.7, 0.5) and not is_duplicate(part, big[None], 0.7, 0.9)
    assert not is_duplicate(apart, big[None], 0.7, 0.5)
    assert is_duplicate(big, part[None], 0.7, 0.5)  # the kept mask inside the new one counts too
    assert is_duplicate(big, big[None], 0.7, 1.0)  # IoU 1 > 0.7
    # boxes and areas given (segment_text computes them once): the same answers; intersections are counted inside
    # the boxes' overlap only, so disjoint boxes cost nothing
    from samclip.prompts import mask_areas, masks_to_boxes

    every = torch.stack([big, part, apart])
    boxes, areas = masks_to_boxes(every).tolist(), mask_areas(every).tolist()
    for i, j in ((1, 0), (2, 0), (0, 1)):
        for cover in (0.5, 0.9):
            assert is_duplicate(every[i], [every[j]], 0.7, cover, box=boxes[i], kept_boxes=[boxes[j]], area=areas[i],
                                kept_areas=[areas[j]]) == is_duplicate(every[i], every[j][None], 0.7, cover)
    corner = torch.zeros(40, 40, dtype=torch.bool)
    corner[30:, 30:] = True
    assert not is_duplicate(corner, [big], 0.0, 0.0) and not is_duplicate(big, [], 0.7, 0.5)
