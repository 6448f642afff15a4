"""CLIP parity with transformers' ``CLIPModel`` through every CLIP checkpoint format we read.

The reference is a tiny random HF CLIP saved with its tokenizer (``conftest.hf_clip``). The same
weights are read from the HF folder, an OpenAI-layout ``.pt`` (architecture inferred as OpenAI's
``build_model`` does), an open_clip training checkpoint (``{"state_dict": {"module." + k: v}}``),
an OpenAI-layout ``.safetensors``, a TorchScript archive (with ``trust_torchscript``) and our own
folder; image embeddings, text embeddings and logits must match HF within 1e-4 (fp32).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import samclip
from samclip.checkpoint import CheckpointError
from samclip.convert import load_clip_checkpoint, to_openai
from samclip.convert.hf_clip import clip_config_from_hf
from samclip.convert.hf_sam import read_hf_config

TOL = 1e-4
TEXTS = [
    "a photo of a cat", "two green circles and a yellow triangle", "a small boat",
    "unseen wörds ÉÀ 123", "a very long caption that will certainly be truncated because it has many words",
]


def _features(out) -> torch.Tensor:  # noqa: ANN001
    return out if torch.is_tensor(out) else out.pooler_output


def _reference(hf) -> dict[str, torch.Tensor]:  # noqa: ANN001
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    tokens = hf.tokenizer(TEXTS)
    with torch.no_grad():
        out = hf.model(input_ids=tokens, pixel_values=pixels)
        return {
            "pixels": pixels, "tokens": tokens, "logits": out.logits_per_image,
            "image": _features(hf.model.get_image_features(pixel_values=pixels)),
            "text": _features(hf.model.get_text_features(input_ids=tokens)),
        }


def _max_diffs(model: samclip.CLIP, ref: dict[str, torch.Tensor]) -> dict[str, float]:
    with torch.no_grad():
        image = model.encode_image(ref["pixels"])
        text = model.encode_text(ref["tokens"])
        logits, logits_t = model(ref["pixels"], ref["tokens"])
    assert torch.equal(logits_t, logits.T)
    return {
        "image": (image - ref["image"]).abs().max().item(),
        "text": (text - ref["text"]).abs().max().item(),
        "logits": (logits - ref["logits"]).abs().max().item(),
    }


def _assert_parity(model: samclip.CLIP, ref: dict[str, torch.Tensor]) -> None:
    diffs = _max_diffs(model, ref)
    assert max(diffs.values()) <= TOL, diffs


@pytest.fixture(scope="module")
def ref(hf_clip) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return _reference(hf_clip)


@pytest.fixture(scope="module")
def ref_gelu(hf_clip_gelu) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return _reference(hf_clip_gelu)


@pytest.fixture(scope="module")
def ours(hf_clip) -> samclip.CLIP:  # noqa: ANN001
    return samclip.load_clip(hf_clip.folder)


class _OpenAILayout(nn.Module):
    """Our CLIP's modules under OpenAI's attribute names, for writing a TorchScript archive."""

    def __init__(self, clip: samclip.CLIP) -> None:
        super().__init__()
        self.visual = clip.visual
        self.token_embedding = clip.text.token_embedding
        self.positional_embedding = clip.text.positional_embedding
        self.transformer = clip.text.transformer
        self.ln_final = clip.text.ln_final
        self.text_projection = clip.text.text_projection
        self.logit_scale = clip.logit_scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


# --------------------------------------------------------------------------------------------- tests
def test_reference_is_not_trivial(ref) -> None:  # noqa: ANN001
    assert ref["image"].std() > 0.1 and ref["text"].std() > 0.1
    assert ref["logits"].std() > 0.1
    # the text feature is pooled at the end token: texts of different lengths differ
    assert (ref["text"][0] - ref["text"][1]).abs().max() > 0.1


def test_hf_folder_parity_and_tokenizer(hf_clip, ref) -> None:  # noqa: ANN001
    model = samclip.load_clip(hf_clip.folder)
    _assert_parity(model, ref)
    assert model.tokenizer is not None
    # the tokenizer read from the HF folder gives HF's ids
    import transformers

    hf_tok = transformers.CLIPTokenizer.from_pretrained(hf_clip.folder)
    ids = model.tokenizer(TEXTS)
    enc = hf_tok(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    valid = enc.attention_mask.bool()
    assert torch.equal(ids[valid], enc.input_ids[valid])
    assert torch.equal(ids, hf_clip.tokenizer(TEXTS))


def test_hf_config_mapping(hf_clip) -> None:  # noqa: ANN001
    cfg, _, tok, fmt = load_clip_checkpoint(hf_clip.folder)
    assert fmt == "huggingface" and tok is not None
    v, t = cfg.vision, cfg.text
    assert (v.image_size, v.patch_size, v.width, v.layers, v.heads, v.act) == (32, 8, 128, 2, 2, "quick_gelu")
    assert (t.context_length, t.width, t.heads, t.layers, t.mlp_ratio) == (16, 128, 2, 2, 4.0)
    assert cfg.embed_dim == 48
    assert (t.sot_token_id, t.eot_token_id) == (tok.sot_token_id, tok.eot_token_id)


def test_openai_pt_with_inferred_architecture(hf_clip, ours, ref, tmp_path) -> None:  # noqa: ANN001
    state = to_openai(ours.state_dict())
    assert "token_embedding.weight" in state and "visual.proj" in state
    # OpenAI's state dicts carry these non-weight entries; they are dropped
    state["input_resolution"] = torch.tensor(32)
    state["context_length"] = torch.tensor(16)
    state["vocab_size"] = torch.tensor(400)
    path = tmp_path / "clip_tiny.pt"
    torch.save(state, path)
    cfg, _, tok, fmt = load_clip_checkpoint(path)
    assert fmt == "openai" and tok is None
    assert cfg == clip_config_from_hf(read_hf_config(hf_clip.folder))
    _assert_parity(samclip.load_clip(path), ref)


def test_open_clip_wrapped_checkpoint(ours, ref, tmp_path) -> None:  # noqa: ANN001
    state = {"module." + k: v for k, v in to_openai(ours.state_dict()).items()}
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "tiny", "state_dict": state, "optimizer": {"lr": 0.1}}, path)
    _, _, _, fmt = load_clip_checkpoint(path)
    assert fmt == "open_clip"
    _assert_parity(samclip.load_clip(path), ref)


def test_openai_layout_safetensors(ours, ref, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in to_openai(ours.state_dict()).items()}, str(path))
    _assert_parity(samclip.load_clip(path), ref)


def test_hf_layout_single_safetensors(hf_clip, ref, tmp_path) -> None:  # noqa: ANN001
    import shutil

    path = tmp_path / "hf_clip.safetensors"
    shutil.copy(hf_clip.folder / "model.safetensors", path)
    _, _, _, fmt = load_clip_checkpoint(path)
    assert fmt == "huggingface"
    _assert_parity(samclip.load_clip(path), ref)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_needs_trust(ours, ref, tmp_path) -> None:  # noqa: ANN001
    traced = torch.jit.trace(_OpenAILayout(ours).eval(), ref["pixels"][:1], check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(traced, str(path))
    with pytest.raises(CheckpointError, match="TorchScript.*trust_torchscript=True"):
        samclip.load_clip(path)
    model = samclip.load_clip(path, trust_torchscript=True)
    _assert_parity(model, ref)
    assert load_clip_checkpoint(path, trust_torchscript=True)[3] == "openai-torchscript"


def test_gelu_hf_folder_parity(hf_clip_gelu, ref_gelu) -> None:  # noqa: ANN001
    model = samclip.load_clip(hf_clip_gelu.folder)
    assert model.config.vision.act == "gelu" and model.config.text.act == "gelu"
    _assert_parity(model, ref_gelu)


def test_open_clip_gelu_needs_config_override(hf_clip_gelu, ref_gelu, tmp_path) -> None:  # noqa: ANN001
    """A state dict cannot tell GELU from QuickGELU: the default is OpenAI's QuickGELU, and a GELU
    open_clip model loads correctly with an explicit config."""
    gelu = samclip.load_clip(hf_clip_gelu.folder)
    path = tmp_path / "open_clip_gelu.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in to_openai(gelu.state_dict()).items()}}, path)
    inferred = samclip.load_clip(path)
    assert inferred.config.vision.act == "quick_gelu"
    assert max(_max_diffs(inferred, ref_gelu).values()) > 1e-3
    _assert_parity(samclip.load_clip(path, config=gelu.config), ref_gelu)


def test_open_clip_hub_folder_reads_its_activation(hf_clip_gelu, ref_gelu, tmp_path) -> None:  # noqa: ANN001
    """open_clip hub folders say ``quick_gelu`` (or not) in ``open_clip_config.json``."""
    import json

    gelu = samclip.load_clip(hf_clip_gelu.folder)
    save_file({k: v.contiguous() for k, v in to_openai(gelu.state_dict()).items()},
              str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 48}}))
    model = samclip.load_clip(tmp_path)
    assert model.config.vision.act == "gelu"
    _assert_parity(model, ref_gelu)


def test_our_format_after_conversion(ours, ref, tmp_path) -> None:  # noqa: ANN001
    samclip.save_pretrained(ours, tmp_path / "ours")
    again = samclip.load_clip(tmp_path / "ours")
    _assert_parity(again, ref)
    assert again.tokenizer is not None
    assert torch.equal(again.tokenizer(TEXTS), ours.tokenizer(TEXTS))
