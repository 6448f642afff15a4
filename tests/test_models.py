"""Model core on tiny presets: shapes, multi-resolution, bf16 path, backbone contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import samclip
from samclip.models import SAM_PRESETS, ImageEncoderConfig, Sam
from samclip.models.image_encoder import relative_position_table, resize_abs_pos


@pytest.fixture(scope="module")
def sam() -> Sam:
    torch.manual_seed(0)
    model = samclip.create_sam("sam-tiny").eval()
    with torch.no_grad():  # non-trivial position tables so resizing them matters
        for name, p in model.named_parameters():
            if "pos" in name:
                p.normal_(0, 0.5)
    return model


def test_native_size_uses_tables_untouched(sam: Sam) -> None:
    enc = sam.image_encoder
    g = enc.config.grid_size
    assert resize_abs_pos(enc.pos_embed, (g, g)) is enc.pos_embed
    table = enc.blocks[1].attn.rel_pos_h  # global block
    assert torch.equal(relative_position_table(g, g, table)[0, 0], table[g - 1])


def test_multi_resolution_grids(sam: Sam) -> None:
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        native = sam.image_encoder(x)
        assert native.shape == (1, 32, 8, 8)
        for size in (64, 96, 160, 224):
            out = sam.image_encoder(torch.randn(1, 3, size, size))
            assert out.shape == (1, 32, size // 16, size // 16)
            assert torch.isfinite(out).all()


def test_resolution_change_is_reversible(sam: Sam) -> None:
    """Running at another size must not modify the stored tables: native output is unchanged after."""
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        before = sam.image_encoder(x)
        sam.image_encoder(torch.randn(1, 3, 64, 64))
        after = sam.image_encoder(x)
    assert torch.equal(before, after)


def test_non_multiple_of_patch_is_rejected(sam: Sam) -> None:
    with pytest.raises(ValueError, match="multiple of the patch size"):
        sam.image_encoder(torch.randn(1, 3, 100, 128))


def test_window_padding_path() -> None:
    """A grid that is not a multiple of the window exercises window padding."""
    cfg = SAM_PRESETS["sam-tiny"].replace(
        image_encoder=ImageEncoderConfig(
            img_size=128, embed_dim=32, depth=2, num_heads=2, out_chans=32, window_size=3,
            global_attn_indexes=(1,),
        )
    )
    model = Sam.from_config(cfg).eval()
    with torch.no_grad():
        assert model.image_encoder(torch.randn(2, 3, 128, 128)).shape == (2, 32, 8, 8)


def test_decode_shapes_and_prompt_kinds(sam: Sam) -> None:
    with torch.no_grad():
        emb = sam.image_embeddings(torch.randn(2, 3, 128, 128))
        pts = torch.rand(6, 3, 2) * 128
        lab = torch.randint(0, 2, (6, 3))
        masks, iou = sam.decode(emb, pts, lab, multimask_output=True)
        assert masks.shape == (6, 3, 32, 32) and iou.shape == (6, 3)
        boxes = torch.tensor([[10.0, 10.0, 60.0, 90.0]]).repeat(2, 1)
        masks, iou = sam.decode(emb, boxes=boxes, multimask_output=False)
        assert masks.shape == (2, 1, 32, 32) and iou.shape == (2, 1)
        masks, _ = sam.decode(emb, boxes=boxes, mask_input=torch.randn(2, 1, 32, 32), multimask_output=False)
        assert masks.shape == (2, 1, 32, 32)
        with pytest.raises(ValueError, match="split evenly"):
            sam.decode(emb, pts[:3], lab[:3])


def test_prompts_at_other_resolution_are_scaled(sam: Sam) -> None:
    """A box covering the whole frame encodes identically at 64 px and at the native 128 px."""
    pe = sam.prompt_encoder
    with torch.no_grad():
        native, _ = pe(None, torch.tensor([[0.0, 0.0, 127.0, 127.0]]), None)
        emb = torch.zeros(1, 32, 4, 4)
        sparse_scaled = []
        orig = pe.forward

        def spy(points, boxes, masks, grid_size=None):  # noqa: ANN001, ANN202
            out = orig(points, boxes, masks, grid_size)
            sparse_scaled.append(out[0])
            return out

        pe.forward = spy  # type: ignore[method-assign]
        try:
            sam.decode(emb, boxes=torch.tensor([[0.0, 0.0, 63.5, 63.5]]))
        finally:
            del pe.forward
    assert torch.allclose(sparse_scaled[0], native, atol=1e-5)


def test_postprocess_to_original_size(sam: Sam) -> None:
    low = torch.full((1, 1, 32, 32), -10.0)
    low[..., :, :8] = 10.0  # left quarter of the frame
    out = sam.postprocess_masks(low, input_size=(64, 128), original_size=(100, 200))
    assert out.shape == (1, 1, 100, 200)
    assert (out[0, 0, :, :40] > 0).all() and (out[0, 0, :, 60:] < 0).all()


def test_bf16_autocast_close_to_fp32(sam: Sam) -> None:
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = sam.image_encoder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = sam.image_encoder(x)
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_every_trainable_parameter_gets_gradient() -> None:
    model = samclip.create_sam("sam-tiny").train()
    model.image_encoder.set_grad_checkpointing(True)
    emb = model.image_embeddings(torch.randn(1, 3, 128, 128))
    masks, iou = model.decode(emb, torch.rand(2, 1, 2) * 128, torch.ones(2, 1, dtype=torch.long),
                              boxes=torch.tensor([[0.0, 0, 50, 50]] * 2),
                              mask_input=torch.randn(2, 1, 32, 32))
    (masks.mean() + iou.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # a mask prompt replaces the no-mask embedding; everything else must learn
    assert missing == ["prompt_encoder.no_mask_embed.weight"], missing


def test_clip_shapes_and_resolution() -> None:
    model = samclip.create_clip("clip-tiny").eval()
    tokens = torch.randint(0, 98, (3, 16))
    tokens[:, 5] = model.config.text.eot_token_id
    with torch.no_grad():
        img = model.encode_image(torch.randn(2, 3, 32, 32), normalize=True)
        assert img.shape == (2, 32) and torch.allclose(img.norm(dim=-1), torch.ones(2))
        assert model.encode_image(torch.randn(2, 3, 48, 48)).shape == (2, 32)
        txt = model.encode_text(tokens)
        assert txt.shape == (3, 32)
        tokens2 = tokens.clone()
        tokens2[:, 6:] = 7  # changes after the EOT must not matter (causal + EOT pooling)
        assert torch.allclose(model.encode_text(tokens2), txt, atol=1e-6)
        logits, logits_t = model(torch.randn(2, 3, 32, 32), tokens)
        assert logits.shape == (2, 3) and torch.equal(logits_t, logits.T)


def test_config_round_trip() -> None:
    for cfg in SAM_PRESETS.values():
        assert type(cfg).from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config fields"):
        type(cfg).from_dict({**cfg.to_dict(), "bogus": 1})
    enc = cfg.to_dict()["image_encoder"]
    for change, match in (({"img_size": "256"}, "img_size: expected int, got '256'"),
                          ({"patch_size": 16.0}, "patch_size: expected int"),
                          ({"qkv_bias": 1}, "qkv_bias: expected bool"),
                          ({"global_attn_indexes": [2, "5"]}, "global_attn_indexes"),
                          ({"patch_size": 0}, "patch_size must be >= 1")):
        with pytest.raises(ValueError, match=match):
            type(cfg).from_dict({**cfg.to_dict(), "image_encoder": {**enc, **change}})
    with pytest.raises(ValueError, match="expected a mapping"):
        type(cfg).from_dict([])


def test_hand_edited_model_folders_are_checkpoint_errors(tmp_path) -> None:  # noqa: ANN001
    """A weights file given as the model, or a config.json with wrong types: one CheckpointError naming the file."""
    import json

    from samclip.checkpoint import CheckpointError
    from samclip.testing import tiny_merged_model

    folder = samclip.save_pretrained(tiny_merged_model(), tmp_path / "m")
    with pytest.raises(CheckpointError, match="is a file; expected a model folder"):
        samclip.load_model(folder / "model.safetensors")
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["sam"]["image_encoder"]["patch_size"] = 0
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="patch_size must be >= 1"):
        samclip.load_model(folder)
    meta["config"] = []
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="a \"config\" object"):
        samclip.load_model(folder)


def test_no_forbidden_runtime_imports() -> None:
    import subprocess
    import sys

    code = "import sys, samclip, samclip.models, samclip.factory; " \
           "bad=[m for m in ('torchvision','timm','open_clip') if m in sys.modules]; print(bad); " \
           "sys.exit(1 if bad else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_clip_head_region_pooling() -> None:
    """Region pooling: the whole grid equals the ordinary pooled embedding; a region's embedding does
    not depend on tokens outside it; an all-True key mask changes nothing."""
    from samclip.models import ClipHead, ClipHeadConfig

    enc = SAM_PRESETS["sam-tiny"].image_encoder
    torch.manual_seed(0)
    head = ClipHead(ClipHeadConfig(depth=2, mlp_hidden=32, out_dim=16), enc).eval()
    g = 4
    x = torch.randn(1, g, g, enc.embed_dim)
    with torch.no_grad():
        whole = head.region_pooled(x, torch.ones(1, g, g, dtype=torch.bool))
        assert torch.allclose(whole, head.pooled(head.tokens(x)), atol=1e-5)
        assert torch.allclose(head.tokens(x, torch.ones(1, g * g, dtype=torch.bool)), head.tokens(x), atol=1e-6)
        region = torch.zeros(2, g, g, dtype=torch.bool)
        region[0, :2, :2] = True
        region[1, 1:, 3] = True
        a = head.region_pooled(x, region)
        y = x.clone()
        y[0, 3, 0] += 5.0  # outside both regions
        assert torch.allclose(a, head.region_pooled(y, region), atol=1e-5)
        y[0, 0, 0] += 5.0  # inside region 0 only
        b = head.region_pooled(y, region)
        assert not torch.allclose(a[0], b[0], atol=1e-3) and torch.allclose(a[1], b[1], atol=1e-5)
    with pytest.raises(ValueError, match="at least one token"):
        head.region_pooled(x, torch.zeros(1, g, g, dtype=torch.bool))


def test_bf16_switch_resolves_per_machine(monkeypatch) -> None:  # noqa: ANN001
    """``None`` / "auto" follow the hardware probe; explicit values win; junk is a clear error."""
    from samclip import precision

    monkeypatch.delenv(precision.ENV_OVERRIDE, raising=False)  # conftest pins the suite to fp32
    for fast in (True, False):
        monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert precision.resolve_bf16(None) is fast and precision.resolve_bf16("AUTO") is fast
    assert precision.resolve_bf16(True) and precision.resolve_bf16("true") and not precision.resolve_bf16("fp32")
    with pytest.raises(ValueError, match="bf16 must be"):
        precision.resolve_bf16("half")
    # SAMCLIP_BF16 decides what "auto" means in this process (samclip eval --dtype); explicit values still win
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setenv(precision.ENV_OVERRIDE, "false")
    assert not precision.resolve_bf16("auto") and not precision.resolve_bf16(None) and precision.resolve_bf16(True)
    monkeypatch.setenv(precision.ENV_OVERRIDE, "true")
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert precision.resolve_bf16("auto") and not precision.resolve_bf16(False)
    monkeypatch.setenv(precision.ENV_OVERRIDE, "auto")
    assert not precision.resolve_bf16("auto")
    monkeypatch.setenv(precision.ENV_OVERRIDE, "maybe")
    with pytest.raises(ValueError, match="SAMCLIP_BF16 must be"):
        precision.resolve_bf16("auto")


def test_clip_head_dense_pool_window() -> None:
    """dense_pool=k: each patch's embedding is the pooled path over the k x k tokens centred on it (cut at
    the grid's edge); k=1 is each token alone; even or non-positive k is refused."""
    from samclip.models import ClipHead, ClipHeadConfig

    enc = SAM_PRESETS["sam-tiny"].image_encoder
    torch.manual_seed(0)
    one = ClipHead(ClipHeadConfig(depth=1, mlp_hidden=32, out_dim=16), enc).eval()
    three = ClipHead(ClipHeadConfig(depth=1, mlp_hidden=32, out_dim=16, dense_pool=3), enc).eval()
    three.load_state_dict(one.state_dict())
    t = torch.randn(2, 5, 5, enc.embed_dim)
    with torch.no_grad():
        assert torch.allclose(one.per_patch(t), one.mlp(one.norm(t)))
        dense = three.per_patch(t)
        assert dense.shape == (2, 5, 5, 16)
        for i, j in ((0, 0), (2, 3), (4, 4)):
            window = t[:, max(0, i - 1) : i + 2, max(0, j - 1) : j + 2]
            assert torch.allclose(dense[:, i, j], three.pooled(window), atol=1e-5)
    for bad in (0, 2, -1):
        with pytest.raises(ValueError, match="dense_pool"):
            ClipHeadConfig(dense_pool=bad)


def _decoder_paths_agree(monkeypatch, dim: int, heads: int, prompt_args: tuple, spied: tuple) -> set[str]:  # noqa: ANN001
    """A decoder of ``dim`` channels and ``heads`` heads (SAM ViT-B's config at 256, else MLP 4x) with perturbed
    weights (biases too) on 2 random images of 16x16 tokens: the prompts ``prompt_args`` (the prompt
    encoder's points, boxes, masks) decoded by the plain (training) path under autograd and by the
    inference path without it must give the same masks and IoUs. Returns which of the ``spied``
    (class, method name) pairs the inference path called (the plain path must call none)."""
    from samclip.models.configs import MaskDecoderConfig
    from samclip.models.mask_decoder import MaskDecoder
    from samclip.models.prompt_encoder import PromptEncoder

    torch.manual_seed(0)
    cfg = MaskDecoderConfig(transformer_heads=heads) if dim == 256 else MaskDecoderConfig(
        transformer_mlp_dim=4 * dim, transformer_heads=heads, iou_head_hidden_dim=dim)
    dec = MaskDecoder(dim, cfg).eval()
    pe = PromptEncoder(dim, (16, 16), (256, 256), 16).eval()
    for p in list(dec.parameters()) + list(pe.parameters()):
        p.requires_grad_(False).add_(0.05 * torch.randn_like(p))  # biases too: the folded paths handle them
    emb = torch.randn(2, dim, 16, 16)
    calls = []
    for cls, name in spied:
        original = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, *a, _f=original, _n=name: calls.append(_n) or _f(self, *a))

    def decode() -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = pe(*prompt_args, grid_size=(16, 16))
        return dec(emb, pe.get_dense_pe((16, 16)), sparse, dense, multimask_output=True)

    with torch.enable_grad():
        masks_ref, iou_ref = decode()
    assert not calls
    with torch.no_grad():
        masks, iou = decode()
    n = next(len(a if isinstance(a, torch.Tensor) else a[0]) for a in prompt_args if a is not None)
    assert masks.shape == masks_ref.shape == (n, 3, 64, 64)
    torch.testing.assert_close(masks, masks_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(iou, iou_ref, atol=2e-6, rtol=1e-4)
    assert masks_ref.std() > 0.1  # not a trivially constant output
    return set(calls)


@pytest.mark.parametrize(("prompt", "chunk"), [("point", 256), ("points_and_box", 64), ("box_with_mask", 512)])
def test_decoder_inference_path_equals_training_path(prompt: str, chunk: int, monkeypatch) -> None:  # noqa: ANN001
    """Without autograd the decoder folds the image-sized projections into the prompt tokens and runs the
    upscaling as matmuls on token-major features; it must compute the same masks and IoUs as the plain
    (training) path, for SAM ViT-B's decoder sizes (256-d, 8 heads, internal 128-d), 2 images x 2 prompts,
    with the upscaling in one step per prompt, in 4 token chunks per prompt, and 2 prompts per step."""
    from samclip.models import mask_decoder
    from samclip.models.mask_decoder import TokenAttention

    monkeypatch.setattr(mask_decoder, "_UPSCALE_CHUNK", chunk)
    torch.manual_seed(2)
    pts = torch.rand(4, 2, 2) * 256
    boxes = torch.tensor([[20.0, 30.0, 200.0, 120.0]]).repeat(4, 1)
    args = {"point": ((pts[:, :1], torch.ones(4, 1, dtype=torch.long)), None, None),
            "points_and_box": ((pts, torch.tensor([[1, 0]] * 4)), boxes, None),
            "box_with_mask": (None, boxes, torch.randn(4, 1, 64, 64))}[prompt]
    calls = _decoder_paths_agree(monkeypatch, 256, 8, args,
                                 ((TokenAttention, "_few_queries"), (TokenAttention, "_few_keys")))
    assert {"_few_queries", "_few_keys"} <= calls


@pytest.mark.parametrize(("prompts", "points"), [(1, 1), (32, 1), (8, 9)])
def test_decoder_inference_path_over_a_prompt_batch(prompts: int, points: int, monkeypatch) -> None:  # noqa: ANN001
    """tiny-synthetic's decoder sizes (96-d, 4 heads, 16x16 tokens), 2 images x ``prompts`` of ``points``
    points (with 9 the shared image->token attention does not fold its output projection):
    with a batch of prompts the first layer works once per image (its image tokens shared by the image's
    prompts) and the factored attention pays off over the batch; with 1 prompt neither happens. Masks and
    IoUs equal the plain (training) path's either way."""
    from samclip.models.mask_decoder import TokenAttention, TwoWayAttentionBlock

    torch.manual_seed(2)
    n = 2 * prompts
    point_prompts = (torch.rand(n, points, 2) * 256, torch.randint(0, 2, (n, points)))
    spied = ((TokenAttention, "_few_queries"), (TokenAttention, "projected_queries"),
             (TwoWayAttentionBlock, "forward_projected"))
    calls = _decoder_paths_agree(monkeypatch, 96, 4, (point_prompts, None, None), spied)
    expected = set()
    if prompts > 1:
        expected = {"projected_queries", "forward_projected"}
        if points == 1:  # with 9, 4 heads x 15 tokens are more rows than the 48 internal channels: no fold
            expected.add("_few_queries")
    assert calls == expected


def test_decoder_image_cache_serves_later_prompts(monkeypatch) -> None:  # noqa: ANN001
    """``Sam.decoder_image_cache`` (what the Predictor keeps per image): decodes of 1 and of 5 prompts
    given the cache equal the plain (training) path's; with a mask input the cache is not used."""
    from samclip.models.mask_decoder import TwoWayAttentionBlock

    torch.manual_seed(1)
    model = samclip.create_sam("sam-tiny").eval().requires_grad_(False)
    for p in model.mask_decoder.parameters():
        p.add_(0.05 * torch.randn_like(p))
    emb = torch.randn(1, model.config.prompt_embed_dim, 16, 16)
    with torch.no_grad():
        cache = model.decoder_image_cache(emb)
    used = []
    original = TwoWayAttentionBlock.forward_projected
    monkeypatch.setattr(TwoWayAttentionBlock, "forward_projected",
                        lambda self, q, *a: used.append(q.shape[0]) or original(self, q, *a))
    for n in (1, 5):
        pts, lab = torch.rand(n, 2, 2) * 256, torch.tensor([[1, 0]] * n)
        with torch.enable_grad():
            ref = model.decode(emb, pts, lab)
        assert len(used) == (0 if n == 1 else 1)
        with torch.no_grad():
            got = model.decode(emb, pts, lab, image_cache=cache)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert used == [1, 5]  # the training path (enable_grad) never takes it
    mask = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        with_cache = model.decode(emb, pts[:1], lab[:1], mask_input=mask, image_cache=cache)
        without = model.decode(emb, pts[:1], lab[:1], mask_input=mask)
    assert torch.equal(with_cache[0], without[0])
    assert (with_cache[0] - got[0][:1]).abs().max() > 1e-3  # the mask input mattered


def test_traced_decoder_keeps_dynamic_prompt_batch() -> None:
    """What the ONNX export traces: the inference path of a ViT-B-sized decoder traced with 2 prompts of 3
    points must run 5 prompts of 1 point (and 1 of 6) like the eager module."""
    import warnings

    from samclip.models.configs import MaskDecoderConfig
    from samclip.models.mask_decoder import MaskDecoder

    torch.manual_seed(0)
    dec = MaskDecoder(256, MaskDecoderConfig()).eval().requires_grad_(False)
    for p in dec.parameters():
        p.add_(0.05 * torch.randn_like(p))
    emb, pe = torch.randn(1, 256, 16, 16), torch.randn(1, 256, 16, 16)

    def inputs(n: int, t: int) -> tuple[torch.Tensor, ...]:
        return emb, pe, torch.randn(n, t, 256), torch.randn(n, 256, 16, 16)

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent branches
        traced = torch.jit.trace(lambda *a: dec(*a, multimask_output=True), inputs(2, 3))
        for n, t in ((5, 1), (1, 6)):
            x = inputs(n, t)
            masks, iou = traced(*x)
            ref_masks, ref_iou = dec(*x, multimask_output=True)
            assert masks.shape == (n, 3, 64, 64)
            torch.testing.assert_close(masks, ref_masks, atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(iou, ref_iou, atol=2e-6, rtol=1e-4)


def test_single_mask_inference_computes_only_the_selected_token() -> None:
    """multimask_output=False without autograd upsamples only mask token 0 and returns what the training
    path returns (which computes every token's mask and slices)."""
    torch.manual_seed(4)
    model = samclip.create_sam("sam-tiny").eval().requires_grad_(False)
    for p in model.mask_decoder.parameters():
        p.add_(0.05 * torch.randn_like(p))
    emb = torch.randn(1, model.config.prompt_embed_dim, 16, 16)
    pts, lab = torch.rand(3, 1, 2) * 256, torch.ones(3, 1, dtype=torch.long)
    for multimask, m in ((False, 1), (True, 3)):
        with torch.enable_grad():
            ref = model.decode(emb, pts, lab, multimask_output=multimask)
        with torch.no_grad():
            got = model.decode(emb, pts, lab, multimask_output=multimask)
        assert got[0].shape == ref[0].shape == (3, m, 64, 64) and got[1].shape == (3, m)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("fold", [True, False])
def test_mixed_precision_decode_follows_fp32(fold: bool, monkeypatch) -> None:  # noqa: ANN001
    """bf16 image embeddings through fp32 weights without autocast (the bf16 Predictor's decode): image-sized
    products in bf16, prompt tokens in fp32. With the factored paths forced on a tiny decoder (``fold``, as
    SAM ViT-B takes them) and with the plain path (which casts up), for 1 point, points + box and a mask
    input, with and without the first-layer cache: fp32 IoUs, masks close to the fp32 decode's."""
    from samclip.models import mask_decoder

    if fold:
        monkeypatch.setattr(mask_decoder, "_FOLD_MIN_SAVING", 0)
    torch.manual_seed(6)
    model = samclip.create_sam("sam-tiny").eval().requires_grad_(False)
    for p in model.mask_decoder.parameters():
        p.add_(0.05 * torch.randn_like(p))
    emb = torch.randn(1, model.config.prompt_embed_dim, 16, 16)
    low = emb.bfloat16()
    pts, lab = torch.rand(2, 3, 2) * 256, torch.tensor([[1, 0, 1]] * 2)
    box = torch.tensor([[10.0, 20, 200, 180]] * 2)
    cases = [dict(point_coords=pts[:, :1], point_labels=lab[:, :1]),
             dict(point_coords=pts, point_labels=lab, boxes=box),  # 10 tokens x 2 heads >= 16 internal channels
             dict(point_coords=pts[:, :1], point_labels=lab[:, :1], mask_input=torch.randn(2, 1, 64, 64))]
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cache = model.decoder_image_cache(low)
        for prompt in cases:
            ref_masks, ref_iou = model.decode(emb, **prompt)
            for image_cache in (None, cache):
                masks, iou = model.decode(low, image_cache=image_cache, **prompt)
                assert masks.shape == ref_masks.shape and iou.dtype == torch.float32
                assert (masks.float() - ref_masks).abs().max() < 0.05 * ref_masks.abs().max()
                assert (iou - ref_iou).abs().max() < 0.05


@pytest.mark.parametrize(("input_size", "original_size"),
                         [((128, 128), (128, 128)), ((58, 128), (90, 200)), ((128, 58), (200, 90)),
                          ((1, 128), (1, 300)), ((96, 128), (96, 128)), ((3, 5), (3, 5)), ((127, 128), (500, 501))])
def test_postprocess_equals_the_two_step_reference(sam: Sam, input_size, original_size) -> None:  # noqa: ANN001
    """``postprocess_masks`` upsamples only the low-res rows its crop reads and skips a same-size resize; it
    must equal SAM's reference (upsample to the frame, crop, resize to the original) bit for bit."""
    torch.manual_seed(7)
    low = torch.randn(2, 3, sam.img_size // 4, sam.img_size // 4)
    ref = F.interpolate(low, (sam.img_size, sam.img_size), mode="bilinear", align_corners=False)
    ref = ref[..., : input_size[0], : input_size[1]]
    ref = F.interpolate(ref, original_size, mode="bilinear", align_corners=False)
    got = sam.postprocess_masks(low, input_size, original_size)
    assert got.shape == ref.shape == (2, 3, *original_size)
    assert torch.equal(got, ref)


def test_loaders_and_save_pretrained_name_what_is_wrong(tmp_path) -> None:  # noqa: ANN001
    """A source of the wrong type or an empty one, and saving onto a file: errors naming the argument."""
    for load in (samclip.load_sam, samclip.load_clip, samclip.load_model):
        for bad in (None, 3, ["tiny-synthetic"]):
            with pytest.raises(TypeError, match="source must be a registered name, a path"):
                load(bad)
        with pytest.raises(ValueError, match="source is an empty string"):
            load("  ")
    (tmp_path / "T.txt").write_text("a file")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        samclip.save_pretrained(samclip.create_sam("sam-tiny"), tmp_path / "T.txt")
    assert (tmp_path / "T.txt").read_text() == "a file"


def test_save_pretrained_replaces_a_model_folder_whole(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Saving over a model folder swaps in a complete new one (a failure midway leaves the old one as it was,
    no temporary folder behind); a folder with other files keeps them, the model files written into it."""
    import samclip.checkpoint as ck
    from samclip.testing import tiny_clip

    clip = tiny_clip()
    folder = tmp_path / "m"
    samclip.save_pretrained(clip, folder)
    (folder / "training.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = ck.save_file

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        real(*args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        samclip.save_pretrained(tiny_clip(), folder)
    monkeypatch.setattr(ck, "save_file", real)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary or old folder left
    samclip.save_pretrained(clip, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    loaded = samclip.load_clip(folder)
    assert loaded.tokenizer is not None and torch.equal(loaded.logit_scale, clip.logit_scale)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    samclip.save_pretrained(clip, mine)
    assert (mine / "notes.txt").read_text() == "keep me" and samclip.load_clip(mine) is not None


def test_written_files_have_ordinary_permissions(tmp_path) -> None:  # noqa: ANN001
    """Every file our atomic writes produce (model folders, either way they are saved, and single files) is
    readable as any new file is under the umask, not private to its owner like the temporary file it was."""
    import os

    from samclip.checkpoint import atomic_save_safetensors, atomic_write_bytes
    from samclip.testing import tiny_clip

    old = os.umask(0o022)
    try:
        clip = tiny_clip()
        samclip.save_pretrained(clip, tmp_path / "new")  # a new folder, swapped in whole
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep me")
        samclip.save_pretrained(clip, tmp_path / "mine")  # written file by file into a folder with other files
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        atomic_save_safetensors({"x": torch.zeros(2)}, tmp_path / "b.safetensors")
    finally:
        os.umask(old)
    written = [*(tmp_path / "new").iterdir(), tmp_path / "mine" / "model.safetensors", tmp_path / "a.json",
               tmp_path / "b.safetensors"]
    modes = {p.name if p.parent == tmp_path else f"{p.parent.name}/{p.name}": oct(p.stat().st_mode & 0o777)
             for p in written}
    assert set(modes.values()) == {"0o644"}, modes


def test_dense_pe_cache_is_fp32_whatever_autocast_its_first_caller_ran_under() -> None:
    """The decoder's cached positional encoding is made in fp32 and then cast: a first call under bf16 autocast
    made it in bf16, and a bf16 predictor's masks then changed with the order of its calls."""
    sam = samclip.create_sam("sam-tiny").eval()
    pe = sam.prompt_encoder
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first = pe.get_dense_pe((8, 8), torch.bfloat16).clone()
        pe._dense_pe_key = None  # made again, outside autocast
        again = pe.get_dense_pe((8, 8), torch.bfloat16)
        fp32 = pe.get_dense_pe((8, 8), torch.float32)
    assert torch.equal(first, again) and torch.equal(again, fp32.to(torch.bfloat16))


def test_bf16_predictor_answers_do_not_depend_on_the_call_order() -> None:
    """generate, then a one-prompt predict (an fp32 decode), then generate again: the same masks and scores."""
    import numpy as np

    from samclip.testing import tiny_merged_model

    pred = samclip.Predictor(tiny_merged_model(), bf16=True)
    pred.mixed_decode_min_elements = 10_000  # one prompt (2048 elements) decodes in fp32, 16 (32768) in bf16
    pred.set_image(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    args = {"points_per_side": 4, "pred_iou_thresh": -1e9, "stability_score_thresh": 0.0}
    before = pred.generate(**args)
    pred.predict(point_coords=np.array([[30, 40]]), point_labels=np.array([1]))
    after = pred.generate(**args)
    assert [r["predicted_iou"] for r in before] == [r["predicted_iou"] for r in after]
