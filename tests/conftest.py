"""Shared fixtures: tiny random Hugging Face SAM / CLIP reference models saved with ``save_pretrained``.

Everything is session-scoped and tiny so the conversion and parity suites stay fast. Weights are
re-randomised after construction (``randomize_``): Hugging Face initialises position tables to
zeros and some weights to ~1e-10, which would let a wrong mapping pass a parity test.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from samclip.allocator import tune_malloc

# The suite runs in fp32 on every machine: on CPUs with native bf16 (AMX, AVX512-BF16) "auto" would pick bf16
# autocast and tests that compare two paths of the same computation exactly would compare roundings instead.
# Set before any test (and inherited by the CLI subprocesses); the bf16 paths have tests that force them.
os.environ["SAMCLIP_BF16"] = "false"
tune_malloc()  # as the CLI and the merge run (samclip.allocator); bit for bit the same results, sooner

# ---------------------------------------------------------------------------------------- helpers
CAPTIONS = [
    "a photo of a cat", "a photo of a dog", "a red square on a blue background",
    "two green circles and a yellow triangle", "an aerial photo of a city at night",
    "a close-up of a person's hand holding a phone", "the quick brown fox jumps over the lazy dog",
    "a black and white drawing of a house", "a small boat on a calm lake", "3 apples, 2 pears & 1 lemon!",
]


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter with seeded, non-trivial random values of a sensible scale."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 0:
                continue
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2 and ("pos" in name or "class_embedding" in name):
                p.copy_(0.5 * noise)
            elif p.ndim >= 2:
                p.copy_(noise * p[0].numel() ** -0.5)
            elif name.endswith("weight"):  # norm scales
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()


# -------------------------------------------------------------------------------------------- SAM
#: valid for transformers.SamModel and for us: 128 px, patch 16 -> 8x8 grid; window 3 (padded to 9),
#: block 1 global; vision MLP 96 (ratio 3); decoder heads 8 (SAM's, so shape inference can find them)
HF_SAM_CONFIG = {
    "vision_config": {
        "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "global_attn_indexes": [1],
        "window_size": 3, "image_size": 128, "patch_size": 16, "output_channels": 32, "mlp_dim": 96,
        "num_pos_feats": 16,
    },
    "prompt_encoder_config": {
        "hidden_size": 32, "image_size": 128, "patch_size": 16, "mask_input_channels": 8,
    },
    # layer_norm_eps 1e-5: segment-anything's (PyTorch default) eps for the decoder transformer's
    # LayerNorms, which we use too; transformers defaults to 1e-6 there (a ~1e-4 difference in logits)
    "mask_decoder_config": {
        "hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 8, "iou_head_hidden_dim": 24,
        "layer_norm_eps": 1e-5,
    },
}


@dataclass
class HfSam:
    model: torch.nn.Module  # transformers.SamModel, eval, fp32
    folder: Path  # save_pretrained output (config.json + model.safetensors)


@pytest.fixture(scope="session")
def hf_sam(tmp_path_factory: pytest.TempPathFactory) -> HfSam:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.SamModel(transformers.SamConfig(**HF_SAM_CONFIG))
    randomize_(model, seed=1)
    folder = tmp_path_factory.mktemp("hf_sam")
    model.save_pretrained(folder)
    return HfSam(model, folder)


# ------------------------------------------------------------------------------------------- CLIP
@pytest.fixture(scope="session")
def clip_tokenizer():  # noqa: ANN201
    """A tiny CLIP-style BPE trained on CAPTIONS; its end-of-text token is the largest id."""
    from samclip import ClipTokenizer

    tok = ClipTokenizer.train(CAPTIONS * 4, vocab_size=400, context_length=16)
    assert tok.eot_token_id == tok.vocab_size - 1
    return tok


@pytest.fixture(scope="session")
def tiny_vocab_merges(clip_tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:  # noqa: ANN001
    """(vocab incl. special tokens, merges) of ``clip_tokenizer`` in the vocab.json / merges.txt form."""
    model = json.loads(clip_tokenizer.tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab["<|startoftext|>"] = clip_tokenizer.sot_token_id
    vocab["<|endoftext|>"] = clip_tokenizer.eot_token_id
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return vocab, merges


def hf_clip_config(vocab_size: int, act: str = "quick_gelu") -> dict:
    """Tiny CLIP with 64-wide heads (OpenAI's rule width // 64 then finds the head count)."""
    return {
        "text_config": {
            "vocab_size": vocab_size, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 16, "hidden_act": act,
            "bos_token_id": vocab_size - 2, "eos_token_id": vocab_size - 1, "pad_token_id": vocab_size - 1,
        },
        "vision_config": {
            "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8, "hidden_act": act,
        },
        "projection_dim": 48,
    }


@dataclass
class HfClip:
    model: torch.nn.Module  # transformers.CLIPModel, eval, fp32
    folder: Path  # save_pretrained output incl. the tokenizer
    tokenizer: object  # our ClipTokenizer the HF tokenizer was built from


def _build_hf_clip(tmp_path_factory, vocab_merges, tokenizer, act: str, seed: int) -> HfClip:  # noqa: ANN001
    transformers = pytest.importorskip("transformers")
    vocab, merges = vocab_merges
    model = transformers.CLIPModel(transformers.CLIPConfig(**hf_clip_config(len(vocab), act)))
    randomize_(model, seed=seed)
    folder = tmp_path_factory.mktemp(f"hf_clip_{act}")
    model.save_pretrained(folder)
    hf_tok = transformers.CLIPTokenizer(vocab=vocab, merges=list(merges))
    hf_tok.save_pretrained(folder)
    return HfClip(model, folder, tokenizer)


@pytest.fixture(scope="session")
def hf_clip(tmp_path_factory, tiny_vocab_merges, clip_tokenizer) -> HfClip:  # noqa: ANN001
    return _build_hf_clip(tmp_path_factory, tiny_vocab_merges, clip_tokenizer, "quick_gelu", seed=2)


@pytest.fixture(scope="session")
def hf_clip_gelu(tmp_path_factory, tiny_vocab_merges, clip_tokenizer) -> HfClip:  # noqa: ANN001
    return _build_hf_clip(tmp_path_factory, tiny_vocab_merges, clip_tokenizer, "gelu", seed=3)
