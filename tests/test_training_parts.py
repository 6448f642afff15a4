"""Prompt sampling, losses, scene banks and the teacher training steps on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import samclip
from samclip.data.banks import build_bank
from samclip.losses import (
    clip_contrastive_loss,
    cosine_distillation_loss,
    dice_loss,
    focal_dice,
    mask_iou,
    sam_loss,
    sigmoid_focal_loss,
)
from samclip.prompts import corrective_points, interior_points, jitter_boxes, masks_to_boxes, sample_points


def _square_masks() -> torch.Tensor:
    m = torch.zeros(2, 20, 30, dtype=torch.bool)
    m[0, 2:6, 3:9] = True
    m[1, 10:19, 20:29] = True
    return m


def test_masks_to_boxes_xyxy() -> None:
    boxes = masks_to_boxes(_square_masks())
    assert boxes.tolist() == [[3, 2, 8, 5], [20, 10, 28, 18]]
    assert masks_to_boxes(torch.zeros(1, 5, 5, dtype=torch.bool)).tolist() == [[0, 0, 0, 0]]
    g = torch.Generator().manual_seed(0)
    sparse = torch.rand(6, 37, 53, generator=g) > 0.995  # scattered pixels; one mask empty; a strided view too
    sparse[0] = False
    for m in (sparse, sparse.transpose(1, 2)):
        ref = [[0.0] * 4 if not k.any() else [float(k.nonzero()[:, 1].min()), float(k.nonzero()[:, 0].min()),
                                             float(k.nonzero()[:, 1].max()), float(k.nonzero()[:, 0].max())]
               for k in m]
        assert masks_to_boxes(m).tolist() == ref


def test_points_fall_inside_masks() -> None:
    m = _square_masks()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        pts, ok = sample_points(m, g)
        assert ok.all()
        assert m[torch.arange(2), pts[:, 1].long(), pts[:, 0].long()].all()
        ip = interior_points(m, g, margin=1)
        assert m[torch.arange(2), ip[:, 1].long(), ip[:, 0].long()].all()


def _interior_points_whole_frame(masks: torch.Tensor, generator: torch.Generator, margin: int) -> torch.Tensor:
    """Reference: erode every mask over the whole frame, then sample_points (what interior_points computes)."""
    inner = -torch.nn.functional.max_pool2d(-masks.float()[:, None], 2 * margin + 1, stride=1, padding=margin)
    inner = inner[:, 0] > 0.5
    inner = torch.where(inner.flatten(1).any(1)[:, None, None], inner, masks)
    return sample_points(inner, generator)[0]


@pytest.mark.parametrize("margin", [1, 2, 3])
def test_interior_points_equal_the_whole_frame_erosion(margin: int) -> None:
    """Cropping to each mask's grown box changes no point: masks touching the frame's edges, thin masks (nothing
    left after erosion: any pixel of the mask), one-pixel and empty masks, for the same generator state."""
    scene = np.random.default_rng(margin)
    h, w = 37, 53
    masks = torch.zeros(10, h, w, dtype=torch.bool)
    for k in range(7):
        y0, x0 = scene.integers(-5, h - 3), scene.integers(-5, w - 3)
        masks[k, max(0, y0): y0 + scene.integers(4, 20), max(0, x0): x0 + scene.integers(4, 25)] = True
    masks[7, 10, 3:40] = True  # one pixel thick
    masks[8, 0, w - 1] = True  # one pixel, in a corner
    for seed in range(5):
        got = interior_points(masks, torch.Generator().manual_seed(seed), margin=margin)
        ref = _interior_points_whole_frame(masks, torch.Generator().manual_seed(seed), margin)
        assert torch.equal(got, ref), (seed, got, ref)
    assert got[9].tolist() == [0.0, 0.0]  # the empty mask


def test_corrective_points_label_the_error() -> None:
    target = _square_masks()
    pred = torch.zeros_like(target)
    pred[1] = target[1]
    pred[1, 0, 0] = True  # one false-positive pixel
    g = torch.Generator().manual_seed(0)
    pts, labels = corrective_points(pred, target, g)
    assert labels.tolist() == [1, 0]  # mask 0 missed -> positive click; mask 1 false positive -> negative
    assert pts[1].tolist() == [0.0, 0.0]
    _, labels = corrective_points(target, target, g)
    assert labels.tolist() == [-1, -1]


def test_jitter_boxes_is_bounded() -> None:
    boxes = torch.tensor([[10.0, 10.0, 50.0, 90.0]]).repeat(100, 1)
    out = jitter_boxes(boxes, torch.Generator().manual_seed(0), size=(100, 60))
    assert (out - boxes).abs().max() <= 20.0 + 1e-5
    assert (out[:, 2] >= out[:, 0]).all() and (out[:, 2] <= 59).all()


def test_losses_on_hand_made_tensors() -> None:
    t = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    perfect = torch.tensor([[20.0, -20.0, 20.0, -20.0]])
    wrong = -perfect
    assert focal_dice(perfect, t) < 1e-3 < focal_dice(wrong, t)
    assert dice_loss(perfect, t).item() < 1e-3 and dice_loss(wrong, t).item() > 0.6
    # alpha = 0.25, gamma = 2 at logit 0 and target 1: 0.25 * 0.5^2 * log 2
    assert torch.allclose(sigmoid_focal_loss(torch.zeros(1, 1), torch.ones(1, 1)),
                          torch.tensor([0.25 * 0.25 * float(np.log(2))]), atol=1e-6)
    assert mask_iou(perfect, t).item() == 1.0 and mask_iou(wrong, t).item() == 0.0
    logits = torch.stack([wrong, perfect], 1).view(1, 2, 2, 2)
    loss, parts = sam_loss(logits, torch.tensor([[0.0, 1.0]]), t.view(1, 2, 2))
    assert parts["miou"].item() == 1.0 and parts["iou"].item() < 1e-6  # best output chosen; iou exact
    e = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert cosine_distillation_loss(e, e).abs() < 1e-6
    assert torch.isclose(cosine_distillation_loss(e, -e), torch.tensor(2.0))
    low = clip_contrastive_loss(e, e, torch.tensor(4.6))
    high = clip_contrastive_loss(e, e.roll(1, 0), torch.tensor(4.6))
    assert low < high


def test_scene_bank_is_consistent() -> None:
    bank = build_bank("val", 6, 64, workers=1)
    assert bank.images.shape == (6, 64, 64, 3) and bank.images.dtype == np.uint8
    for i in range(6):
        inst, sem = bank.instance_maps[i], bank.semantic[i]
        assert ((inst > 0) == (sem > 0)).all()
        assert int(inst.max()) == len(bank.objects[i])


def test_scene_bank_same_with_worker_processes() -> None:
    """Workers render chunks of rows into shared memory: the bank is byte for byte the serial one, in order
    (70 rows: two full chunks of 32 and a short one)."""
    serial = build_bank("val", 70, 32, kind="single", workers=1)
    shared = build_bank("val", 70, 32, kind="single", workers=2)
    for name in ("images", "instance_maps", "semantic", "seeds"):
        assert np.array_equal(getattr(serial, name), getattr(shared, name)), name
    assert serial.captions == shared.captions and serial.objects == shared.objects
    assert shared.images[-1].any()  # the short last chunk was rendered too
    # several banks' images rendered into one array, in shared memory or not
    from samclip.data.banks import shared_array

    for out in (shared_array((140, 32, 32, 3)), np.zeros((140, 32, 32, 3), np.uint8)):
        build_bank("val", 70, 32, kind="single", workers=2, images_out=out[:70])
        part = build_bank("val", 70, 32, kind="single", start=70, workers=1, images_out=out[70:])
        assert np.array_equal(out[:70], serial.images) and part.images.base is not None
        assert np.array_equal(out[70:], build_bank("val", 70, 32, kind="single", start=70, workers=1).images)


def test_sam_training_step_learns_something() -> None:
    from samclip.teachers.sam_teacher import sam_training_step

    torch.manual_seed(0)
    model = samclip.create_sam("sam-tiny").train()
    bank = build_bank("val", 4, 128, workers=1)
    images, inst = torch.from_numpy(bank.images), torch.from_numpy(bank.instance_maps)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(15):
        g.manual_seed(0)
        loss, logs = sam_training_step(model, images, inst, g, 4, bf16=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(logs) == {"box_miou", "point_miou", "click2_miou"}
    assert losses[-1] < 0.7 * losses[0], losses


def test_clip_stream_mixes_single_object_scenes() -> None:
    from samclip.data.scenes import single_object_scene, split_seeds
    from samclip.merge.streams import ClipStream

    stream = ClipStream.scene_world(6, 32, single_fraction=0.5)
    assert len(stream) == 6
    seed = split_seeds("train_merge", 1, start=8_000_000)[0]
    assert np.array_equal(stream.images(np.array([3]))[0], single_object_scene(seed, 32).image)
    assert len(ClipStream.scene_world(4, 32)) == 4
    with pytest.raises(ValueError, match="clip_single_fraction"):
        ClipStream.scene_world(4, 32, single_fraction=1.5)


@pytest.mark.parametrize(("per_image", "fraction", "boxes"), [(4, 0.5, 2), (8, 0.75, 6), (4, 0.0, 1), (4, 1.0, 3)])
def test_sam_training_step_box_fraction(monkeypatch: pytest.MonkeyPatch, per_image: int, fraction: float,
                                        boxes: int) -> None:
    """box_fraction sets each image's box share; at least one box and one point prompt always remain."""
    from samclip.teachers import sam_teacher

    seen: list[int] = []
    real = sam_teacher.jitter_boxes

    def spy(b: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(b.shape[0])
        return real(b, *args, **kwargs)

    monkeypatch.setattr(sam_teacher, "jitter_boxes", spy)
    torch.manual_seed(0)
    model = samclip.create_sam("sam-tiny")
    bank = build_bank("val", 2, 64, workers=1)
    g = torch.Generator().manual_seed(0)
    loss, _ = sam_teacher.sam_training_step(model, torch.from_numpy(bank.images), torch.from_numpy(bank.instance_maps),
                                            g, per_image, bf16=False, box_fraction=fraction)
    assert seen == [2 * boxes] and torch.isfinite(loss)


def test_clip_stream_hflip_adds_a_mirrored_view_of_every_image() -> None:
    from samclip.merge.streams import ClipStream
    from samclip.merge.teachers import stream_fingerprint

    plain = ClipStream.scene_world(4, 32)
    flip = ClipStream.scene_world(4, 32, hflip=True)
    assert len(plain) == 4 and len(flip) == 8
    got = flip.images(np.array([1, 5, 0, 7]))
    base = plain.images(np.array([1, 1, 0, 3]))
    assert np.array_equal(got[0], base[0]) and np.array_equal(got[2], base[2])
    assert np.array_equal(got[1], base[1][:, ::-1]) and np.array_equal(got[3], base[3][:, ::-1])
    assert np.array_equal(plain.images(np.array([1]))[0], base[0])  # the held images are never modified
    assert stream_fingerprint(plain) != stream_fingerprint(flip)  # the teacher cache cannot mix them
    with pytest.raises(IndexError):
        flip.images(np.array([8]))


def test_sam_teacher_freeze_encoder_trains_the_prompt_side_only(tmp_path) -> None:  # noqa: ANN001
    """freeze_encoder: the image encoder stays bit for bit (a merge distils it); the decoder learns."""
    from samclip.factory import load_sam, save_pretrained
    from samclip.teachers.sam_teacher import SamTeacherRecipe, train_sam_teacher

    torch.manual_seed(0)
    save_pretrained(samclip.create_sam("sam-synthetic"), tmp_path / "init")
    recipe = SamTeacherRecipe(train_images=4, val_images=1, steps=2, batch_images=2, prompts_per_image=2,
                              eval_every=0, bf16="false", init=str(tmp_path / "init"), freeze_encoder=True)
    train_sam_teacher(recipe, tmp_path / "out")
    before, after = load_sam(str(tmp_path / "init")).state_dict(), load_sam(str(tmp_path / "out")).state_dict()
    encoder = [k for k in before if k.startswith("image_encoder.")]
    decoder = [k for k in before if k.startswith("mask_decoder.")]
    assert encoder and decoder
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    with pytest.raises(ValueError, match="freeze_encoder needs init"):
        train_sam_teacher(SamTeacherRecipe(freeze_encoder=True), tmp_path / "bad")


def test_sam_teacher_patch_size_starts_from_the_init_at_a_finer_grid(tmp_path) -> None:  # noqa: ANN001
    """--patch-size 8 with an init of patch 16: the trained teacher has patch 8 and the init's decoder weights as its
    starting point (a step of training moves them, but only a little)."""
    from samclip.factory import load_sam, save_pretrained
    from samclip.teachers.sam_teacher import SamTeacherRecipe, train_sam_teacher

    torch.manual_seed(0)
    save_pretrained(samclip.create_sam("sam-synthetic"), tmp_path / "init")
    recipe = SamTeacherRecipe(train_images=2, val_images=1, steps=1, batch_images=1, prompts_per_image=2,
                              eval_every=0, bf16="false", lr=1e-5, warmup=0, init=str(tmp_path / "init"),
                              patch_size=8)
    train_sam_teacher(recipe, tmp_path / "out")
    init, out = load_sam(str(tmp_path / "init")), load_sam(str(tmp_path / "out"))
    assert out.config.image_encoder.patch_size == 8 and out.config.image_encoder.grid_size == 32
    w0, w1 = init.mask_decoder.iou_token.weight, out.mask_decoder.iou_token.weight
    assert (w1 - w0).abs().max() < 1e-3
    with pytest.raises(ValueError, match="cannot change its patch_size"):
        train_sam_teacher(SamTeacherRecipe(init="x", freeze_encoder=True, patch_size=8), tmp_path / "bad")


def test_sam_teacher_image_size_starts_from_the_init_at_a_larger_image(tmp_path) -> None:  # noqa: ANN001
    """--image-size 256 with an init read at 128 px (patch 16): the trained teacher reads 256 px scenes on a 16x16 grid,
    from the init's weights (its patch kernel moved only by one small step)."""
    from samclip.factory import load_sam, save_pretrained
    from samclip.teachers.sam_teacher import SamTeacherRecipe, train_sam_teacher

    torch.manual_seed(0)
    save_pretrained(samclip.create_sam("sam-tiny"), tmp_path / "init")
    recipe = SamTeacherRecipe(train_images=2, val_images=1, steps=1, batch_images=1, prompts_per_image=2,
                              eval_every=0, bf16="false", lr=1e-5, warmup=0, init=str(tmp_path / "init"),
                              image_size=256)
    info = train_sam_teacher(recipe, tmp_path / "out")
    init, out = load_sam(str(tmp_path / "init")), load_sam(str(tmp_path / "out"))
    assert out.config.image_encoder.img_size == 256 and out.config.image_encoder.grid_size == 16
    assert out.config.image_encoder.patch_size == init.config.image_encoder.patch_size == 16
    w0, w1 = init.image_encoder.patch_embed.proj.weight, out.image_encoder.patch_embed.proj.weight
    assert (w1 - w0).abs().max() < 1e-3
    assert info["recipe"]["image_size"] == 256
    with pytest.raises(ValueError, match="cannot change its patch_size or image_size"):
        train_sam_teacher(SamTeacherRecipe(init="x", freeze_encoder=True, image_size=512), tmp_path / "bad")


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_sam_training_step_box_noise(monkeypatch: pytest.MonkeyPatch, noise: float) -> None:
    """box_noise is the boxes' jitter: 0 decodes the ground-truth boxes themselves, SAM's 0.1 moves them."""
    from samclip.teachers import sam_teacher

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = sam_teacher.jitter_boxes

    def spy(b: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        out = real(b, *args, **kwargs)
        seen.append((b, out))
        return out

    monkeypatch.setattr(sam_teacher, "jitter_boxes", spy)
    torch.manual_seed(0)
    bank = build_bank("val", 2, 64, workers=1)
    g = torch.Generator().manual_seed(0)
    sam_teacher.sam_training_step(samclip.create_sam("sam-tiny"), torch.from_numpy(bank.images),
                                  torch.from_numpy(bank.instance_maps), g, 4, bf16=False, box_noise=noise)
    (given, used), = seen
    assert torch.equal(given, used) == (noise == 0)


@pytest.mark.parametrize("module, args, message", [
    ("sam_teacher", ["--steps", "-1"], "--steps -1: must be >= 1"),
    ("sam_teacher", ["--batch-images", "0"], "--batch-images 0: must be >= 1"),
    ("sam_teacher", ["--box-fraction", "5"], "--box-fraction 5.0: must be in [0, 1]"),
    ("sam_teacher", ["--lr", "nan"], "--lr nan"),
    ("sam_teacher", ["--bf16", "maybe"], "expected auto, true or false"),
    ("clip_teacher", ["--batch", "0"], "--batch 0: must be >= 2"),
    ("clip_teacher", ["--vocab-size", "0"], "--vocab-size 0: must be >= 260"),
])
def test_teacher_recipes_out_of_range_exit_2_before_any_work(tmp_path, capsys, module, args, message) -> None:  # noqa: ANN001
    """A zero batch trained on nothing and saved NaN weights, negative steps an untrained teacher (exit 0)."""
    import importlib

    main = importlib.import_module(f"samclip.teachers.{module}").main
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "t"), *args])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_teacher_init_and_preset_are_checked_before_rendering(tmp_path, capsys) -> None:  # noqa: ANN001
    from samclip.teachers import sam_teacher

    for args, message in ((["--init", str(tmp_path / "nope")], "no such file or folder"),
                          (["--preset", "bogus"], "unknown SAM preset 'bogus'")):
        with pytest.raises(SystemExit) as e:
            sam_teacher.main(["--out", str(tmp_path / "t"), "--train-images", "100000", *args])  # no time to render
        assert e.value.code == 2 and message in capsys.readouterr().err
