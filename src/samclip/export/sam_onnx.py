"""Export the SAM side of a model in segment-anything's own ONNX interface, for tools built around it.

segment-anything ships two export scripts (``scripts/export_onnx_model.py`` for the prompt encoder + mask
decoder, ``scripts/export_image_encoder.py`` for the image encoder), and browser demos, labelling tools and edge
runtimes load their files by those tensor names. :func:`export_sam_onnx` writes a merged model's SAM
head (or any SAM) with the same interface into a folder:

- ``sam_encoder.onnx``: ``input_image`` -> ``image_embeddings`` 1xCxGxG. By default ``input_image`` is
  1x3xSxS float32, normalised with the model's pixel mean / std and padded bottom / right to SxS (S: the
  model's native frame, 1024 for SAM, 256 for tiny-synthetic). With ``use_preprocess`` it is the resized image
  itself, HxWx3 float32 RGB in 0-255 with max(H, W) = S (H and W dynamic); the graph normalises and pads.
  For a merged model this is the one backbone pass and the SAM neck (the CLIP head is not in it).
- ``sam_decoder.onnx``: ``image_embeddings`` 1xCxGxG, ``point_coords`` 1xNx2 float32 (x, y in the resized
  image's pixels: the original coordinates times S / max(H, W)), ``point_labels`` 1xN float32 (-1 padding, 0
  background, 1 foreground, 2 / 3 box corners), ``mask_input`` 1x1x4Gx4G, ``has_mask_input`` [1], ``orig_im_size``
  [2] float32 (H, W of the original image) -> ``masks`` 1xKxHxW logits at the original size (threshold at the
  manifest's ``mask_threshold``, 0), ``iou_predictions`` 1xK and ``low_res_masks`` 1xKx4Gx4G. N is dynamic. K = 4:
  the single-mask output, then the three multimask outputs, as segment-anything's export returns them; with
  ``return_single_mask`` K = 1, chosen as that export does: the single-mask output where the prompt has more than
  two points (padding included), else the multimask output with the highest predicted IoU. Without a box, append a
  (0, 0) point labelled -1, as segment-anything's ONNX examples do.
- ``sam_onnx.json``: what a runtime needs beside the graphs (frame, grid, pixel mean / std, mask threshold, the
  options, the tensor names, the source).

``decoder_precision="int8"`` writes the decoder with dynamically quantized weights, as the ``--quantize-out``
option of segment-anything's script does. The masks match the PyTorch :class:`~samclip.Predictor`'s logits
(tested); the image embeddings are those of :meth:`~samclip.Predictor.get_image_embedding`.

    samclip export sam-onnx --model tiny-synthetic --out exports/sam --return-single-mask
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.sam import Sam
from ..models.samclip import SamClip
from .onnx_export import (
    SAM_MANIFEST_NAME,
    PromptDecoderGraph,
    _export_view,
    _quantize_in_place,
    _torch_export,
    check_export_options,
    check_out_folder,
    writing_export,
)
from .sam_source import load_sam_side

ENCODER_NAME = "sam_encoder.onnx"
DECODER_NAME = "sam_decoder.onnx"
FORMAT = "segment-anything-onnx"
ENCODER_INPUTS = ("input_image",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")


class SamEncoderGraph(nn.Module):
    """``input_image`` -> SAM image embeddings: a normalised, padded 1x3xSxS batch, or (``use_preprocess``) the
    resized HxWx3 0-255 image, normalised, moved to channels first and padded here."""

    def __init__(self, sam: Sam, use_preprocess: bool) -> None:
        super().__init__()
        self.model = _export_view(sam)
        self.use_preprocess = use_preprocess

    def forward(self, input_image: torch.Tensor) -> torch.Tensor:
        x = input_image
        if self.use_preprocess:
            x = self.model.preprocess(x.permute(2, 0, 1)[None])
        return self.model.image_embeddings(x)


class SamDecoderGraph(PromptDecoderGraph):
    """The prompt encoder and mask decoder in segment-anything's ONNX interface: every mask token's output (or
    the one :meth:`select` picks), upsampled to the original image size given as a tensor."""

    def __init__(self, sam: Sam, return_single_mask: bool) -> None:
        super().__init__(sam, sam.img_size, multimask_output=True)
        self.return_single_mask = return_single_mask
        self.frame = sam.img_size

    @staticmethod
    def select(masks: torch.Tensor, iou: torch.Tensor, num_points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask per prompt, by segment-anything's ONNX rule: token 0 (the single-mask output) for prompts of
        more than two points, else the multimask output (tokens 1..) with the highest predicted IoU.
        masks BxKxhxw, iou BxK -> Bx1xhxw, Bx1."""
        best_multi = iou[:, 1:].argmax(1) + 1
        idx = torch.where(num_points > 2, torch.zeros_like(best_multi), best_multi)
        rows = torch.arange(masks.shape[0], device=masks.device)
        return masks[rows, idx][:, None], iou[rows, idx][:, None]

    def upsample(self, low_res: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """Low-res logits Bx Kx4Gx4G -> BxKxHxW at ``orig_im_size`` (H, W): up to the SxS frame, cropped to the
        resized image (longest side S, sides rounded half up), then to the original size; bilinear, as
        :meth:`Sam.postprocess_masks`."""
        x = F.interpolate(low_res, size=(self.frame, self.frame), mode="bilinear", align_corners=False)
        size = orig_im_size.to(torch.float32)
        resized = torch.floor(size * (self.frame / size.max()) + 0.5).to(torch.int64)
        x = x[..., : resized[0], : resized[1]]
        hw = orig_im_size.to(torch.int64)
        return F.interpolate(x, size=(hw[0], hw[1]), mode="bilinear", align_corners=False)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,  # type: ignore[override]
                point_labels: torch.Tensor, mask_input: torch.Tensor, has_mask_input: torch.Tensor,
                orig_im_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse, dense = self._prompt_embeddings(point_coords, point_labels, mask_input, has_mask_input)
        low_res, iou = self.mask_decoder.predict_masks(image_embeddings, self.dense_pe, sparse, dense)
        if self.return_single_mask:
            num_points = torch.tensor(point_coords.shape[1], device=point_coords.device)
            low_res, iou = self.select(low_res, iou, num_points)
        return self.upsample(low_res, orig_im_size), iou, low_res


def export_sam_onnx(model: Sam | SamClip | str | os.PathLike, out: str | os.PathLike, *,
                    kind: str = "auto", return_single_mask: bool = False, use_preprocess: bool = False,
                    opset: int = 17, decoder_precision: str = "fp32", overwrite: bool = True,
                    exporter: str = "auto") -> Path:
    """Write ``model``'s SAM side to the folder ``out`` in segment-anything's ONNX interface (module docstring).

    ``model``: a :class:`Sam` or merged :class:`SamClip` (its SAM side: backbone, neck, prompt encoder, mask
    decoder), or a name / path read as :func:`~samclip.export.sam_source.load_sam_side` says. The folder is written
    whole (temporary folder, then renamed); a folder holding other files than an export's is refused. Returns
    ``out``."""
    check_export_options(opset, exporter, decoder_precision)
    for flag, value in (("return_single_mask", return_single_mask), ("use_preprocess", use_preprocess)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    out = check_out_folder(out, overwrite)
    sam, source, model_type = load_sam_side(model, kind)
    if next(sam.parameters()).dtype != torch.float32:
        raise ValueError("export a float32 model; call model.float() first")
    frame, patch = sam.img_size, sam.config.image_encoder.patch_size
    grid = frame // patch
    device = next(sam.parameters()).device
    with writing_export(out, sam) as tmp:
        with torch.no_grad():
            if use_preprocess:
                image = torch.rand(frame, frame * 3 // 4, 3, device=device) * 255
                enc_dyn = {"input_image": {0: "image_height", 1: "image_width"}}
            else:
                image = torch.randn(1, 3, frame, frame, device=device)
                enc_dyn = {}
            encoder = SamEncoderGraph(sam, use_preprocess)
            exporters = {ENCODER_NAME: _torch_export(encoder, (image,), tmp / ENCODER_NAME, ENCODER_INPUTS,
                                                     ENCODER_OUTPUTS, enc_dyn, opset, exporter)}
            args = (torch.randn(1, sam.config.prompt_embed_dim, grid, grid, device=device),
                    torch.rand(1, 3, 2, device=device) * frame,
                    torch.tensor([[2.0, 3.0, 1.0]], device=device),
                    torch.randn(1, 1, 4 * grid, 4 * grid, device=device),
                    torch.ones(1, device=device),
                    torch.tensor([frame * 1.5, frame * 2.25], device=device))
            dyn = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
            exporters[DECODER_NAME] = _torch_export(SamDecoderGraph(sam, return_single_mask), args, tmp / DECODER_NAME,
                                                    DECODER_INPUTS, DECODER_OUTPUTS, dyn, opset, exporter)
            if decoder_precision == "int8":
                _quantize_in_place(tmp / DECODER_NAME)
        manifest = {
            "format": FORMAT, "source": source, "model_type": model_type,
            "frame": frame, "grid": grid, "patch_size": patch, "low_res": 4 * grid,
            "embed_dim": sam.config.prompt_embed_dim, "pixel_mean": list(sam.config.pixel_mean),
            "pixel_std": list(sam.config.pixel_std), "mask_threshold": sam.mask_threshold,
            "return_single_mask": return_single_mask, "use_preprocess": use_preprocess,
            "decoder_precision": decoder_precision, "opset": opset, "torch_version": torch.__version__,
            "exporters": exporters,
            "encoder": {"file": ENCODER_NAME, "inputs": list(ENCODER_INPUTS), "outputs": list(ENCODER_OUTPUTS)},
            "decoder": {"file": DECODER_NAME, "inputs": list(DECODER_INPUTS), "outputs": list(DECODER_OUTPUTS),
                        "masks": 1 if return_single_mask else 1 + sam.config.mask_decoder.num_multimask_outputs},
        }
        (tmp / SAM_MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def read_sam_manifest(folder: Path) -> dict:
    """The ``sam_onnx.json`` of an export folder, checked to be what :func:`export_sam_onnx` writes (the fields
    ``samclip info`` shows); ValueError naming what is not."""
    path = Path(folder) / SAM_MANIFEST_NAME
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        why = "not a JSON object" if not isinstance(m, dict) else f"format {m.get('format')!r}, not {FORMAT!r}"
    else:
        missing = [k for k in ("model_type", "frame", "grid", "use_preprocess", "decoder_precision", "opset",
                               "encoder", "decoder") if k not in m]
        if not missing and not (isinstance(m["decoder"], dict) and "masks" in m["decoder"]):
            missing = ["decoder.masks"]
        if not missing:
            return m
        why = "no field " + ", ".join(repr(k) for k in missing)
    raise ValueError(f"{path}: not the manifest `samclip export sam-onnx` writes ({why})")


__all__ = ["DECODER_NAME", "ENCODER_NAME", "SamDecoderGraph", "SamEncoderGraph", "export_sam_onnx",
           "read_sam_manifest"]
