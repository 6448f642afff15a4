"""CLIP's ModifiedResNet image tower: OpenAI's RN50 key layout, attention-pool numerics against
torch's multi-head attention, multi-resolution, checkpoint round trips, MaskCLIP's ResNet variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import samclip
from samclip.convert.detect import meta_state_keys
from samclip.convert.openai_clip import from_openai, infer_clip_config, to_openai
from samclip.eval.baselines import maskclip_patch_embeddings
from samclip.models import CLIP, clip_preset
from samclip.models.clip_resnet import AttentionPool2d


def _tiny_rn() -> CLIP:
    cfg = clip_preset("clip-tiny")
    cfg = cfg.replace(vision=cfg.vision.replace(image_size=64, patch_size=16, width=8, layers=(1, 2, 1, 1),
                                                heads=4),
                      text=cfg.text.replace(width=64, heads=1))  # OpenAI's head rules: inferable
    torch.manual_seed(0)
    model = CLIP.from_config(cfg)
    with torch.no_grad():  # zero-initialised bn3 scales and fresh BN statistics would hide bugs
        for name, t in model.state_dict().items():
            if name.endswith(("bn3.weight", "running_mean")):
                t.normal_(0, 0.5)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
    return model.eval()


def official_rn50_visual_shapes() -> dict[str, tuple[int, ...]]:
    """OpenAI's RN50 image tower (``visual.*``): keys and shapes, written out from its modules."""
    out: dict[str, tuple[int, ...]] = {}

    def bn(name: str, c: int) -> None:
        out.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                    f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})

    out["visual.conv1.weight"] = (32, 3, 3, 3)
    bn("visual.bn1", 32)
    out["visual.conv2.weight"] = (32, 32, 3, 3)
    bn("visual.bn2", 32)
    out["visual.conv3.weight"] = (64, 32, 3, 3)
    bn("visual.bn3", 64)
    inplanes = 64
    for stage, depth in enumerate((3, 4, 6, 3), start=1):
        planes = 64 * 2 ** (stage - 1)
        for i in range(depth):
            p = f"visual.layer{stage}.{i}"
            out[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{p}.bn1", planes)
            out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if i == 0:
                out[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    out["visual.attnpool.positional_embedding"] = (50, 2048)
    for proj in ("q", "k", "v"):
        out[f"visual.attnpool.{proj}_proj.weight"] = (2048, 2048)
        out[f"visual.attnpool.{proj}_proj.bias"] = (2048,)
    out["visual.attnpool.c_proj.weight"] = (1024, 2048)
    out["visual.attnpool.c_proj.bias"] = (1024,)
    return out


def test_rn50_preset_matches_openai_layout() -> None:
    with torch.device("meta"):
        model = CLIP.from_config(clip_preset("RN50"))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("visual.")}
    assert got == official_rn50_visual_shapes()
    assert meta_state_keys(lambda: CLIP.from_config(clip_preset("clip-rn101")))


def test_attention_pool_matches_torch_multi_head_attention() -> None:
    """OpenAI computes the pool with ``F.multi_head_attention_forward``; ours uses SDPA."""
    torch.manual_seed(1)
    pool = AttentionPool2d(grid=3, dim=32, heads=4, out_dim=16).eval()
    x = torch.randn(2, 32, 3, 3)
    t = pool.tokens(x).transpose(0, 1)  # (1+HW)xBxC
    ref, _ = F.multi_head_attention_forward(
        query=t[:1], key=t, value=t, embed_dim_to_check=32, num_heads=4,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True,
        training=False, need_weights=False,
    )  # fmt: skip
    with torch.no_grad():
        assert torch.allclose(pool(x), ref[0], atol=1e-5)
    # the mean token is the query: permuting spatial cells together with their positions changes nothing
    assert torch.allclose(t[0], x.flatten(2).mean(-1) + pool.positional_embedding[0], atol=1e-6)


def test_resnet_multi_resolution_and_errors() -> None:
    model = _tiny_rn()
    with torch.no_grad():
        native = model.encode_image(torch.randn(2, 3, 64, 64))
        assert native.shape == (2, 32)
        assert model.visual.feature_map(torch.randn(1, 3, 96, 128)).shape == (1, 256, 3, 4)
        assert torch.isfinite(model.encode_image(torch.randn(1, 3, 96, 128))).all()
    with pytest.raises(ValueError, match="multiples of 32"):
        model.encode_image(torch.randn(1, 3, 100, 64))


def test_resnet_openai_round_trip_and_inference(tmp_path: Path) -> None:
    model = _tiny_rn()
    state = to_openai(model.state_dict())
    assert "visual.layer2.1.bn3.running_var" in state and "token_embedding.weight" in state
    # some exports drop BatchNorm counters: they are filled back in
    slim = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    ours = from_openai(slim)
    assert ours.keys() == model.state_dict().keys()
    assert infer_clip_config(ours) == model.config
    samclip.save_pretrained(model, tmp_path)
    again = samclip.load_clip(tmp_path)
    assert again.config == model.config and again.config.vision.layers == (1, 2, 1, 1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.encode_image(x), again.encode_image(x))


def test_maskclip_resnet_variant() -> None:
    model = _tiny_rn()
    image = np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8)
    emb = maskclip_patch_embeddings(model, image, size=128)
    assert emb.shape == (4, 4, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4, 4), atol=1e-5)
