"""SAM parity with transformers' ``SamModel`` through every SAM checkpoint format we read.

One tiny random HF SAM (see ``conftest.hf_sam``) is the reference. Its weights are loaded from the
HF folder, from a segment-anything ``.pth`` (architecture inferred from shapes), from a single
HF-layout ``.safetensors`` (inferred too) and from a ``pytorch_model.bin`` folder, and every load
must reproduce HF's image embeddings, low-res masks and IoU predictions within 1e-4 (fp32).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import samclip
from samclip.convert import load_sam_checkpoint, to_segment_anything
from samclip.convert.hf_sam import sam_config_from_hf
from samclip.convert.safe_load import read_hf_weights

TOL = 1e-4
B, P = 2, 2  # images, prompts per image
FRAME = 128


def _prompts() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    pts3 = torch.rand(B, P, 3, 2, generator=g) * FRAME
    lab3 = torch.tensor([[[1, 0, -1], [1, 1, 0]], [[0, 1, 1], [1, -1, -1]]])
    xy = torch.rand(B, P, 2, generator=g) * FRAME * 0.6
    wh = torch.rand(B, P, 2, generator=g) * FRAME * 0.4 + 4
    boxes = torch.cat([xy, xy + wh], dim=-1)
    pts2 = torch.rand(B, P, 2, 2, generator=g) * FRAME
    lab2 = torch.tensor([[[1, 0], [1, 1]], [[0, 1], [1, 0]]])
    masks = torch.randn(B, 1, FRAME // 4, FRAME // 4, generator=g)
    return {
        "points": {"input_points": pts3, "input_labels": lab3},
        "boxes": {"input_boxes": boxes},
        "points+boxes": {"input_points": pts2, "input_labels": lab2, "input_boxes": boxes},
        "points+mask": {"input_points": pts2, "input_labels": lab2, "input_masks": masks},
    }


PROMPTS = _prompts()


def _ours_args(prompt: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF's (B, P, ...) prompts -> our flat N = B * P prompts (prompt i belongs to image i // P)."""
    out = {}
    if "input_points" in prompt:
        out["point_coords"] = prompt["input_points"].reshape(B * P, -1, 2)
        out["point_labels"] = prompt["input_labels"].reshape(B * P, -1)
    if "input_boxes" in prompt:
        out["boxes"] = prompt["input_boxes"].reshape(B * P, 4)
    if "input_masks" in prompt:
        out["mask_input"] = prompt["input_masks"].repeat_interleave(P, dim=0)
    return out


@pytest.fixture(scope="module")
def reference(hf_sam):  # noqa: ANN001, ANN201
    """HF outputs: image embeddings and (masks, iou) per prompt kind and multimask flag."""
    pixels = torch.randn(B, 3, FRAME, FRAME, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        emb = hf_sam.model.get_image_embeddings(pixels)
        decoded = {}
        for kind, prompt in PROMPTS.items():
            for multimask in (True, False):
                out = hf_sam.model(image_embeddings=emb, multimask_output=multimask, **prompt)
                k = 3 if multimask else 1
                decoded[kind, multimask] = (
                    out.pred_masks.reshape(B * P, k, FRAME // 4, FRAME // 4), out.iou_scores.reshape(B * P, k)
                )
    return pixels, emb, decoded


def _max_diffs(model: samclip.Sam, reference) -> dict[str, float]:  # noqa: ANN001
    pixels, emb_ref, decoded = reference
    diffs = {}
    with torch.no_grad():
        emb = model.image_embeddings(pixels)
        diffs["embeddings"] = (emb - emb_ref).abs().max().item()
        for (kind, multimask), (masks_ref, iou_ref) in decoded.items():
            masks, iou = model.decode(emb_ref, multimask_output=multimask, **_ours_args(PROMPTS[kind]))
            assert masks.shape == masks_ref.shape and iou.shape == iou_ref.shape
            diffs[f"{kind} masks mm={multimask}"] = (masks - masks_ref).abs().max().item()
            diffs[f"{kind} iou mm={multimask}"] = (iou - iou_ref).abs().max().item()
    return diffs


def _assert_parity(model: samclip.Sam, reference) -> None:  # noqa: ANN001
    diffs = _max_diffs(model, reference)
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOL, f"{worst}: max abs diff {diffs[worst]:.2e} (all: {diffs})"


@pytest.fixture(scope="module")
def sam_from_hf(hf_sam) -> samclip.Sam:  # noqa: ANN001
    return samclip.load_sam(hf_sam.folder)


def test_reference_is_not_trivial(reference) -> None:  # noqa: ANN001
    _, emb, decoded = reference
    assert emb.std() > 0.1
    masks, iou = decoded["points", True]
    assert masks.std() > 0.05 and iou.std() > 0.01
    # the prompts matter: different kinds give different masks
    assert (decoded["boxes", True][0] - masks).abs().max() > 0.01


def test_hf_folder_format_and_config(hf_sam) -> None:  # noqa: ANN001
    cfg, state, fmt = load_sam_checkpoint(hf_sam.folder)
    assert fmt == "huggingface"
    enc = cfg.image_encoder
    assert (enc.img_size, enc.embed_dim, enc.depth, enc.num_heads, enc.window_size) == (128, 32, 3, 2, 3)
    assert enc.global_attn_indexes == (1,) and enc.mlp_ratio == 3.0 and enc.out_chans == 32
    assert cfg.mask_in_chans == 8
    assert cfg.mask_decoder.transformer_heads == 8 and cfg.mask_decoder.iou_head_hidden_dim == 24
    assert set(state) == set(samclip.create_sam(cfg).state_dict())


def test_hf_folder_parity(sam_from_hf, reference) -> None:  # noqa: ANN001
    _assert_parity(sam_from_hf, reference)


@pytest.mark.parametrize("kind", list(PROMPTS))
@pytest.mark.parametrize("multimask", [True, False])
def test_prompt_parity(sam_from_hf, reference, kind: str, multimask: bool) -> None:  # noqa: ANN001
    _, emb_ref, decoded = reference
    masks_ref, iou_ref = decoded[kind, multimask]
    with torch.no_grad():
        masks, iou = sam_from_hf.decode(emb_ref, multimask_output=multimask, **_ours_args(PROMPTS[kind]))
    assert (masks - masks_ref).abs().max().item() <= TOL
    assert (iou - iou_ref).abs().max().item() <= TOL


def test_segment_anything_pth_with_inferred_architecture(sam_from_hf, hf_sam, reference, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "sam_tiny.pth"
    torch.save(to_segment_anything(sam_from_hf.state_dict()), path)
    cfg, _, fmt = load_sam_checkpoint(path, None)
    assert fmt == "segment-anything"
    hf_cfg = sam_config_from_hf(samclip.convert.hf_sam.read_hf_config(hf_sam.folder))
    assert cfg == hf_cfg  # every field, including the global blocks, window and decoder sizes
    _assert_parity(samclip.load_sam(path), reference)


def test_hf_single_safetensors_with_inferred_architecture(hf_sam, reference, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "hf_sam.safetensors"
    shutil.copy(hf_sam.folder / "model.safetensors", path)
    cfg, _, fmt = load_sam_checkpoint(path, None)
    assert fmt == "huggingface"
    _assert_parity(samclip.load_sam(path), reference)
    # an explicit config is used as given
    _assert_parity(samclip.load_sam(path, config=cfg), reference)


def test_hf_pytorch_model_bin_folder(hf_sam, reference, tmp_path: Path) -> None:  # noqa: ANN001
    shutil.copy(hf_sam.folder / "config.json", tmp_path / "config.json")
    torch.save(read_hf_weights(hf_sam.folder), tmp_path / "pytorch_model.bin")
    _assert_parity(samclip.load_sam(tmp_path), reference)


def test_our_format_after_conversion(sam_from_hf, reference, tmp_path) -> None:  # noqa: ANN001
    samclip.save_pretrained(sam_from_hf, tmp_path / "ours")
    _assert_parity(samclip.load_sam(tmp_path / "ours"), reference)
