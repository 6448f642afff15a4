"""Checkpoint conversion: safety, readable errors, our format's round trip, shape inference,
full-size key layouts (segment-anything ViT-B, OpenAI ViT-B/16, Hugging Face defaults), tokenizers."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import samclip
from samclip import ClipTokenizer
from samclip.checkpoint import CheckpointError
from samclip.convert import (
    from_openai,
    infer_clip_config,
    infer_sam_config,
    load_clip_checkpoint,
    load_sam_checkpoint,
    to_openai,
    to_segment_anything,
)
from samclip.convert.detect import meta_state_keys
from samclip.convert.hf_clip import clip_config_from_hf, hf_clip_to_ours, read_hf_tokenizer
from samclip.convert.hf_sam import hf_sam_to_ours, sam_config_from_hf
from samclip.models import CLIP, Sam, clip_preset, sam_preset


def _random_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def _meta_state(build) -> dict[str, torch.Tensor]:  # noqa: ANN001
    with torch.device("meta"):
        return build().state_dict()


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def tiny_sam() -> Sam:
    return _random_(samclip.create_sam("sam-tiny"), 0)


@pytest.fixture(scope="module")
def tiny_clip_pt(tmp_path_factory) -> Path:  # noqa: ANN001
    """A tiny CLIP (64-wide heads) saved as an OpenAI state dict."""
    cfg = clip_preset("clip-tiny")
    cfg = cfg.replace(
        vision=cfg.vision.replace(width=64, heads=1), text=cfg.text.replace(width=64, heads=1)
    )
    path = tmp_path_factory.mktemp("clip") / "clip.pt"
    torch.save(to_openai(_random_(samclip.create_clip(cfg), 1).state_dict()), path)
    return path


# ------------------------------------------------------------------------------------------- safety
class _Evil:
    """Unpickling this runs ``touch <marker>`` - unless the unpickler refuses the global."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
@pytest.mark.parametrize("loader", ["sam", "clip"])
def test_malicious_pickle_is_not_executed(tmp_path: Path, container: str, loader: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / ("evil.pth" if loader == "sam" else "evil.pt")
    if container == "torch.save":
        torch.save({"image_encoder.pos_embed": torch.zeros(1), "payload": _Evil(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    load = samclip.load_sam if loader == "sam" else samclip.load_clip
    with pytest.raises(CheckpointError, match="refused to unpickle") as err:
        load(path)
    assert not marker.exists(), "the pickle's payload ran"
    assert len(str(err.value)) < 600


def test_truncated_files(tiny_sam: Sam, tmp_path: Path) -> None:
    st = tmp_path / "sam.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_sam.state_dict().items()}, str(st))
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        samclip.load_sam(st)
    pth = tmp_path / "sam.pth"
    torch.save(tiny_sam.state_dict(), pth)
    pth.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        samclip.load_sam(pth)
    # our folder with a truncated model.safetensors
    samclip.save_pretrained(tiny_sam, tmp_path / "ours")
    weights = tmp_path / "ours" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        samclip.load_sam(tmp_path / "ours")


def test_clip_file_given_to_load_sam(tiny_clip_pt: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        samclip.load_sam(tiny_clip_pt)
    msg = str(err.value)
    assert len(msg) < 600, msg
    assert "OpenAI / open_clip CLIP" in msg and "does not fit a SAM model" in msg
    assert "missing keys: image_encoder." in msg and "unexpected keys:" in msg
    assert "\n" not in msg


def test_sam_file_given_to_load_clip(tiny_sam: Sam, tmp_path: Path) -> None:
    path = tmp_path / "sam.pth"
    torch.save(to_segment_anything(tiny_sam.state_dict()), path)
    with pytest.raises(CheckpointError) as err:
        samclip.load_clip(path)
    msg = str(err.value)
    assert len(msg) < 600 and "segment-anything SAM" in msg and "does not fit a CLIP model" in msg
    assert "missing keys: logit_scale" in msg and "unexpected keys: image_encoder." in msg


def test_hf_folders_of_the_other_kind(hf_clip, hf_sam) -> None:  # noqa: ANN001
    with pytest.raises(CheckpointError, match="Hugging Face CLIP") as err:
        samclip.load_sam(hf_clip.folder)
    assert len(str(err.value)) < 600
    with pytest.raises(CheckpointError, match="Hugging Face SAM") as err:
        samclip.load_clip(hf_sam.folder)
    assert len(str(err.value)) < 600


def test_our_folder_of_the_other_kind(tiny_sam: Sam, tmp_path: Path) -> None:
    samclip.save_pretrained(tiny_sam, tmp_path)
    with pytest.raises(CheckpointError, match="'sam' checkpoint, not 'clip'"):
        samclip.load_clip(tmp_path)


def test_unknown_formats_list_the_supported_ones(tmp_path: Path) -> None:
    junk = tmp_path / "weights.pth"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="supported: .*segment-anything"):
        samclip.load_sam(junk)
    with pytest.raises(CheckpointError, match="supported: .*OpenAI"):
        samclip.load_clip(junk)
    other = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(2, 3, 3, 3), "fc.weight": torch.zeros(4, 2)}, str(other))
    with pytest.raises(CheckpointError, match="unrecognised SAM checkpoint layout .*conv1.weight.*Supported"):
        samclip.load_sam(other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a SAM checkpoint folder; supported"):
        samclip.load_sam(tmp_path / "empty")
    no_tensors = tmp_path / "list.pt"
    torch.save([1, 2, 3], no_tensors)
    with pytest.raises(CheckpointError, match="holds no tensors"):
        samclip.load_clip(no_tensors)


def test_wrapped_sam_checkpoint(tiny_sam: Sam, tmp_path: Path) -> None:
    path = tmp_path / "finetuned.pth"
    state = {"module." + k: v for k, v in tiny_sam.state_dict().items()}
    torch.save({"model": state, "epoch": 4, "optimizer": {"lr": torch.tensor(0.1)}}, path)
    cfg, loaded, fmt = load_sam_checkpoint(path, sam_preset("sam-tiny"))
    assert fmt == "segment-anything" and cfg == sam_preset("sam-tiny")
    assert all(torch.equal(loaded[k], v) for k, v in tiny_sam.state_dict().items())


# ------------------------------------------------------------------------------ our format round trip
def test_sam_round_trip_is_exact(tiny_sam: Sam, tmp_path: Path) -> None:
    samclip.save_pretrained(tiny_sam, tmp_path)
    again = samclip.load_sam(tmp_path)
    assert again.config == tiny_sam.config
    a, b = tiny_sam.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 3, 128, 128)
    pts, lab = torch.tensor([[[30.0, 40.0], [90.0, 20.0]]]), torch.tensor([[1, 0]])
    with torch.no_grad():
        assert all(torch.equal(u, v) for u, v in zip(tiny_sam(x, pts, lab), again(x, pts, lab)))


def test_clip_round_trip_with_tokenizer_is_exact(tmp_path: Path) -> None:
    tok = ClipTokenizer.train(["a photo of a cat", "a drawing of a dog", "two red squares"] * 5, 300, 16)
    cfg = clip_preset("clip-tiny")
    cfg = cfg.replace(text=cfg.text.replace(
        vocab_size=tok.vocab_size, sot_token_id=tok.sot_token_id, eot_token_id=tok.eot_token_id
    ))
    model = _random_(samclip.create_clip(cfg), 3)
    model.tokenizer = tok
    samclip.save_pretrained(model, tmp_path)
    again = samclip.load_clip(tmp_path)
    assert again.config == cfg
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    texts = ["a photo of a dog", "squares"]
    assert torch.equal(again.tokenizer(texts), tok(texts))
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(model(x, tok(texts))[0], again(x, again.tokenizer(texts))[0])
    # an explicit config overrides the stored one
    assert load_clip_checkpoint(tmp_path, cfg.replace(init_logit_scale=1.0))[0].init_logit_scale == 1.0


# ------------------------------------------------------------------------------- shape inference
@pytest.mark.parametrize("name", ["sam-vit-b", "sam-vit-l", "sam-vit-h"])
def test_sam_inference_recovers_presets(name: str) -> None:
    state = _meta_state(lambda: Sam.from_config(sam_preset(name)))
    assert infer_sam_config(state) == sam_preset(name)


def test_sam_inference_on_tiny(tiny_sam: Sam) -> None:
    cfg = infer_sam_config(tiny_sam.state_dict())
    preset = sam_preset("sam-tiny")
    # the decoder head count is not in the shapes: SAM's 8 is assumed
    assert cfg.mask_decoder.transformer_heads == 8
    assert cfg.replace(mask_decoder=preset.mask_decoder) == preset


@pytest.mark.parametrize("name", ["clip-vit-b-32", "clip-vit-b-16", "clip-vit-l-14", "clip-rn50", "clip-rn101"])
def test_clip_inference_recovers_presets(name: str) -> None:
    state = _meta_state(lambda: CLIP.from_config(clip_preset(name)))
    assert infer_clip_config(state) == clip_preset(name)
    assert infer_clip_config(from_openai(to_openai(state))) == clip_preset(name)


@pytest.mark.parametrize("name", ["clip-vit-b-16", "clip-vit-l-14"])
def test_gelu_presets_are_the_openai_towers_with_gelu(name: str) -> None:
    state = _meta_state(lambda: CLIP.from_config(clip_preset(name + "-gelu")))
    assert infer_clip_config(state, act="gelu") == clip_preset(name + "-gelu")
    assert clip_preset(name + "-gelu").vision.act == clip_preset(name + "-gelu").text.act == "gelu"


def test_clip_inference_refuses_unknowable_heads() -> None:
    state = _meta_state(lambda: CLIP.from_config(clip_preset("clip-tiny")))  # 32-wide towers
    with pytest.raises(CheckpointError, match="head count"):
        infer_clip_config(state)


# ------------------------------------------------------------------------ full-size key layouts
def official_sam_vit_b_shapes() -> dict[str, tuple[int, ...]]:
    """segment-anything's ``sam_vit_b_01ec64.pth``: keys and shapes, written out from its modules."""
    d, c, out = 768, 256, {}
    out["image_encoder.pos_embed"] = (1, 64, 64, d)
    out["image_encoder.patch_embed.proj.weight"] = (d, 3, 16, 16)
    out["image_encoder.patch_embed.proj.bias"] = (d,)
    for i in range(12):
        b = f"image_encoder.blocks.{i}."
        rel = 127 if i in (2, 5, 8, 11) else 27
        out |= {
            b + "norm1.weight": (d,), b + "norm1.bias": (d,),
            b + "norm2.weight": (d,), b + "norm2.bias": (d,),
            b + "attn.rel_pos_h": (rel, 64), b + "attn.rel_pos_w": (rel, 64),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "mlp.lin1.weight": (4 * d, d), b + "mlp.lin1.bias": (4 * d,),
            b + "mlp.lin2.weight": (d, 4 * d), b + "mlp.lin2.bias": (d,),
        }
    out |= {
        "image_encoder.neck.0.weight": (c, d, 1, 1), "image_encoder.neck.1.weight": (c,),
        "image_encoder.neck.1.bias": (c,), "image_encoder.neck.2.weight": (c, c, 3, 3),
        "image_encoder.neck.3.weight": (c,), "image_encoder.neck.3.bias": (c,),
    }
    p = "prompt_encoder."
    out[p + "pe_layer.positional_encoding_gaussian_matrix"] = (2, c // 2)
    for i in range(4):
        out[f"{p}point_embeddings.{i}.weight"] = (1, c)
    out[p + "not_a_point_embed.weight"] = (1, c)
    out[p + "no_mask_embed.weight"] = (1, c)
    for idx, w, bias in [(0, (4, 1, 2, 2), 4), (1, (4,), 4), (3, (16, 4, 2, 2), 16), (4, (16,), 16),
                         (6, (c, 16, 1, 1), c)]:
        out[f"{p}mask_downscaling.{idx}.weight"] = w
        out[f"{p}mask_downscaling.{idx}.bias"] = (bias,)

    def attn(prefix: str, inner: int) -> None:
        for proj in ("q_proj", "k_proj", "v_proj"):
            out[f"{prefix}.{proj}.weight"] = (inner, c)
            out[f"{prefix}.{proj}.bias"] = (inner,)
        out[f"{prefix}.out_proj.weight"] = (c, inner)
        out[f"{prefix}.out_proj.bias"] = (c,)

    m = "mask_decoder."
    for i in range(2):
        t = f"{m}transformer.layers.{i}."
        attn(t + "self_attn", c)
        attn(t + "cross_attn_token_to_image", c // 2)
        attn(t + "cross_attn_image_to_token", c // 2)
        for n in range(1, 5):
            out[f"{t}norm{n}.weight"] = out[f"{t}norm{n}.bias"] = (c,)
        out |= {t + "mlp.lin1.weight": (2048, c), t + "mlp.lin1.bias": (2048,),
                t + "mlp.lin2.weight": (c, 2048), t + "mlp.lin2.bias": (c,)}
    attn(m + "transformer.final_attn_token_to_image", c // 2)
    out[m + "transformer.norm_final_attn.weight"] = out[m + "transformer.norm_final_attn.bias"] = (c,)
    out[m + "iou_token.weight"] = (1, c)
    out[m + "mask_tokens.weight"] = (4, c)
    out |= {m + "output_upscaling.0.weight": (c, c // 4, 2, 2), m + "output_upscaling.0.bias": (c // 4,),
            m + "output_upscaling.1.weight": (c // 4,), m + "output_upscaling.1.bias": (c // 4,),
            m + "output_upscaling.3.weight": (c // 4, c // 8, 2, 2), m + "output_upscaling.3.bias": (c // 8,)}
    for i in range(4):
        for j, shape in enumerate([(c, c), (c, c), (c // 8, c)]):
            out[f"{m}output_hypernetworks_mlps.{i}.layers.{j}.weight"] = shape
            out[f"{m}output_hypernetworks_mlps.{i}.layers.{j}.bias"] = shape[:1]
    for j, shape in enumerate([(c, c), (c, c), (4, c)]):
        out[f"{m}iou_prediction_head.layers.{j}.weight"] = shape
        out[f"{m}iou_prediction_head.layers.{j}.bias"] = shape[:1]
    return out


def openai_vit_b_16_shapes() -> dict[str, tuple[int, ...]]:
    """OpenAI's ViT-B/16 ``model.state_dict()`` (after its build_model drops the int entries)."""
    out: dict[str, tuple[int, ...]] = {"logit_scale": (), "positional_embedding": (77, 512),
                                       "text_projection": (512, 512), "token_embedding.weight": (49408, 512),
                                       "ln_final.weight": (512,), "ln_final.bias": (512,)}

    def blocks(prefix: str, w: int) -> None:
        for i in range(12):
            b = f"{prefix}transformer.resblocks.{i}."
            out.update({
                b + "attn.in_proj_weight": (3 * w, w), b + "attn.in_proj_bias": (3 * w,),
                b + "attn.out_proj.weight": (w, w), b + "attn.out_proj.bias": (w,),
                b + "ln_1.weight": (w,), b + "ln_1.bias": (w,),
                b + "ln_2.weight": (w,), b + "ln_2.bias": (w,),
                b + "mlp.c_fc.weight": (4 * w, w), b + "mlp.c_fc.bias": (4 * w,),
                b + "mlp.c_proj.weight": (w, 4 * w), b + "mlp.c_proj.bias": (w,),
            })

    blocks("", 512)
    blocks("visual.", 768)
    out |= {"visual.class_embedding": (768,), "visual.positional_embedding": (197, 768),
            "visual.proj": (768, 512), "visual.conv1.weight": (768, 3, 16, 16),
            "visual.ln_pre.weight": (768,), "visual.ln_pre.bias": (768,),
            "visual.ln_post.weight": (768,), "visual.ln_post.bias": (768,)}
    return out


def _numel(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(int(torch.Size(s).numel()) for s in shapes.values())


def test_sam_vit_b_matches_segment_anything_release() -> None:
    ours = _shapes(_meta_state(lambda: samclip.create_sam("sam-vit-b")))
    official = official_sam_vit_b_shapes()
    assert ours == official
    params = sum(p.numel() for p in meta_params(lambda: samclip.create_sam("sam-vit-b")))
    # 93.7M parameters (the Gaussian PE matrix is a buffer)
    assert params == _numel(official) - 2 * 128 and abs(params - 93.7e6) < 0.05e6


def test_clip_vit_b_16_matches_openai_release() -> None:
    state = _meta_state(lambda: samclip.create_clip("clip-vit-b-16"))
    assert _shapes(to_openai(state)) == openai_vit_b_16_shapes()
    params = sum(p.numel() for p in meta_params(lambda: samclip.create_clip("clip-vit-b-16")))
    assert params == _numel(openai_vit_b_16_shapes()) and abs(params - 149.6e6) < 0.05e6


def meta_params(build) -> list[torch.nn.Parameter]:  # noqa: ANN001
    with torch.device("meta"):
        return list(build().parameters())


def test_hf_sam_default_converts_to_vit_b() -> None:
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.SamConfig()  # transformers' default SAM has ViT-B sizes
    hf_state = _meta_state(lambda: transformers.SamModel(hf_cfg))
    converted = hf_sam_to_ours(hf_state)
    assert _shapes(converted) == official_sam_vit_b_shapes()
    assert sam_config_from_hf(hf_cfg.to_dict()) == sam_preset("sam-vit-b")


def test_hf_clip_vit_b_16_converts_to_ours() -> None:
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.CLIPConfig(vision_config={"patch_size": 16})
    converted = hf_clip_to_ours(_meta_state(lambda: transformers.CLIPModel(hf_cfg)))
    assert _shapes(converted) == _shapes(_meta_state(lambda: samclip.create_clip("clip-vit-b-16")))
    assert clip_config_from_hf(hf_cfg.to_dict()) == clip_preset("clip-vit-b-16")
    assert set(converted) == set(meta_state_keys(lambda: CLIP.from_config(clip_preset("clip-vit-b-16"))))


# ----------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_from_vocab_merges_matches_hf(tiny_vocab_merges, tmp_path: Path) -> None:  # noqa: ANN001
    transformers = pytest.importorskip("transformers")
    vocab, merges = tiny_vocab_merges
    texts = ["a photo of a cat", "Two  GREEN circles!!", "it's 3 apples & 2 pears", "unseen wörds ÉÀ",
             "a close-up of a person's hand holding a phone at night in a city"]
    ours = ClipTokenizer.from_vocab_merges(vocab, list(merges), context_length=16)
    hf = transformers.CLIPTokenizer(vocab=vocab, merges=list(merges))
    enc = hf(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    ids = ours(texts)
    valid = enc.attention_mask.bool()
    assert torch.equal(ids[valid], enc.input_ids[valid])
    assert (ids[~valid] == 0).all()
    # the same from vocab.json + merges.txt files, as found in a Hugging Face folder
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    from_files = read_hf_tokenizer(tmp_path, 16)
    assert from_files is not None and torch.equal(from_files(texts), ids)


def test_trained_tokenizer_round_trip_and_framing(clip_tokenizer) -> None:  # noqa: ANN001
    tok = clip_tokenizer
    text = "a red square on a blue background"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    row = tok(text)[0]
    n = len(ids)
    assert row[0] == tok.sot_token_id and row[n + 1] == tok.eot_token_id
    assert row[1 : n + 1].tolist() == ids and (row[n + 2 :] == 0).all()
    long = tok(" ".join([text] * 10))[0]
    assert long[0] == tok.sot_token_id and long[-1] == tok.eot_token_id and len(long) == tok.context_length


def test_trained_tokenizer_is_the_same_in_every_process() -> None:
    """ClipTokenizer.train gives the same tokenizer in separate processes (the tokenizers library's trainer gave
    other ids from run to run: its hash-map order broke ties between merges), and learns merges by frequency."""
    import subprocess
    import sys

    code = ("from samclip.tokenizer import ClipTokenizer; print(ClipTokenizer.train(['a red star', 'a blue ring', "
            "'two red stars', 'a green square next to a red star'] * 3, 300, 16).to_json())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(3)}
    assert len(runs) == 1
    trained = ClipTokenizer.train(["a red star", "a blue ring", "two red stars", "a green square next to a red star"]
                                  * 3, 300, 16)
    assert trained.to_json() == runs.pop().strip()
    assert trained.tokenizer.encode("red star", add_special_tokens=False).tokens == ["red</w>", "star</w>"]


def test_trained_tokenizer_decode_is_exact(clip_tokenizer) -> None:  # noqa: ANN001
    text = "a red square on a blue background"
    assert clip_tokenizer.decode(clip_tokenizer.encode(text)) == text


def test_finer_patch_sam_reads_the_image_as_the_original_reads_it_upsampled() -> None:
    """patch 16 -> 8: the new patch embedding of x equals the original's of x nearest-upsampled 2x, the position
    embedding and global relative-position tables follow the doubled grid, every other tensor is unchanged, and
    the model runs end to end at the finer grid (4x as many tokens, masks at 4x the new grid)."""
    import torch.nn.functional as F

    from samclip.convert.patch_size import finer_patch_sam

    torch.manual_seed(0)
    sam = samclip.create_sam("sam-tiny").eval()
    fine = finer_patch_sam(sam, 8)
    enc, enc8 = sam.image_encoder, fine.image_encoder
    assert fine.config.image_encoder.patch_size == 8 and fine.config.image_encoder.grid_size == 16
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        want = enc.patch_embed(F.interpolate(x, scale_factor=2, mode="nearest"))
        got = enc8.patch_embed(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert enc8.pos_embed.shape == (1, 16, 16, 32)
    glob = sam.config.image_encoder.global_attn_indexes[0]
    assert enc8.blocks[glob].attn.rel_pos_h.shape[0] == 31 and enc.blocks[glob].attn.rel_pos_h.shape[0] == 15
    old, new = sam.state_dict(), fine.state_dict()
    changed = {k for k in old if old[k].shape != new[k].shape or not torch.equal(old[k], new[k])}
    assert changed == {"image_encoder.patch_embed.proj.weight", "image_encoder.pos_embed",
                       f"image_encoder.blocks.{glob}.attn.rel_pos_h", f"image_encoder.blocks.{glob}.attn.rel_pos_w"}
    with torch.no_grad():
        emb = fine.image_embeddings(x)
        masks, _ = fine.decode(emb, torch.tensor([[[40.0, 60.0]]]), torch.ones(1, 1, dtype=torch.long))
    assert emb.shape == (1, 32, 16, 16) and masks.shape == (1, 3, 64, 64)
    for bad in (5, 32, 0):
        with pytest.raises(ValueError, match="patch_size"):
            finer_patch_sam(sam, bad)


def test_larger_image_sam_keeps_the_patch_and_resizes_only_the_positions() -> None:
    """128 -> 256 px at patch 16: the kernel and every other weight are the original's, the position embedding
    is the original's resized to the 16x16 grid, the global
    relative-position tables follow the grid, and the model runs end to end at the new size."""
    from samclip.convert.patch_size import larger_image_sam
    from samclip.models.image_encoder import resize_abs_pos

    torch.manual_seed(0)
    sam = samclip.create_sam("sam-tiny").eval()
    with torch.no_grad():
        sam.image_encoder.pos_embed.normal_()
    big = larger_image_sam(sam, 256)
    enc, big_enc = sam.image_encoder, big.image_encoder
    assert big.config.image_encoder.img_size == 256 and big.config.image_encoder.grid_size == 16
    torch.testing.assert_close(big_enc.pos_embed, resize_abs_pos(enc.pos_embed, (16, 16)))
    glob = sam.config.image_encoder.global_attn_indexes[0]
    assert big_enc.blocks[glob].attn.rel_pos_h.shape[0] == 31
    old, new = sam.state_dict(), big.state_dict()
    changed = {k for k in old if old[k].shape != new[k].shape or not torch.equal(old[k], new[k])}
    assert changed == {"image_encoder.pos_embed", f"image_encoder.blocks.{glob}.attn.rel_pos_h",
                       f"image_encoder.blocks.{glob}.attn.rel_pos_w"}
    with torch.no_grad():
        emb = big.image_embeddings(torch.randn(1, 3, 256, 256))
        masks, _ = big.decode(emb, torch.tensor([[[40.0, 60.0]]]), torch.ones(1, 1, dtype=torch.long))
    assert emb.shape == (1, 32, 16, 16) and masks.shape == (1, 3, 64, 64)
    for bad in (100, 8, 0):
        with pytest.raises(ValueError, match="img_size"):
            larger_image_sam(sam, bad)
