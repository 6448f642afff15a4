"""One predictor for every task of the merged model, served from ONE backbone pass per image.

    predictor = Predictor(samclip.load_model("tiny-synthetic"))
    predictor.set_image(image)                      # HxWx3 uint8 RGB; the only backbone pass
    masks, scores, low_res = predictor.predict(point_coords=[[120, 80]], point_labels=[1])
    probs = predictor.classify(["star", "ring", "heart"])
    sem = predictor.semantic_segment(["star", "ring"], refine=True)
    inst = predictor.segment_text("star", vocabulary=["ring", "heart"])
    everything = predictor.generate(vocabulary=["star", "ring", "heart"])

Conventions (see :mod:`samclip.inference.image_input`):

- The image is resized so its longest side is the model's native frame ``S`` (segment-anything's
  ``ResizeLongestSide``) and padded bottom/right to SxS. ``original_size = (H, W)``; ``input_size = (h, w)``.
- Every coordinate in this API is an (x, y) pixel position of the ORIGINAL image (X first; integer
  values are pixel indices, the prompt encoder adds 0.5 for the pixel centre). Boxes are XYXY.
  Points and boxes outside the image are clipped into it (x to [0, W-1], y to [0, H-1]).
- Masks come back at the original size; low-resolution logits are 4Gx4G for a GxG token grid and
  cover the whole padded frame (feed them back as ``mask_input``).
- ``bf16=True`` runs the networks under bfloat16 autocast, and on CPUs the prompt decodes in bf16 for
  everything image-sized with the prompt tokens' small products in fp32; outputs are float32. The default (``None``)
  uses it only where it is fast (GPUs, CPUs with AMX / AVX512-BF16; see :mod:`samclip.precision`).

Works on a merged :class:`~samclip.models.SamClip` (all tasks) or a plain :class:`~samclip.models.Sam`
(SAM tasks: ``predict``, ``predict_torch``, ``generate`` without vocabulary); CLIP tasks on a plain SAM
raise ``ValueError``.

Layout: :class:`Predictor` composes one class per job, each in its own module: :mod:`.base` (images and their
cached passes, SAM prompts, text embeddings, the CLIP head's reads, ``classify``), :mod:`.labelling`
(``mask_embeddings`` / ``label_masks``), :mod:`.semantic` (``semantic_segment``), :mod:`.text_instances`
(``segment_text``), :mod:`.everything` (``generate``); :mod:`.state` holds the per-image cache and
:mod:`.checks` the input validation.
"""

from __future__ import annotations

from .base import BACKGROUND_PROMPTS, PredictorBase
from .everything import EverythingMode
from .labelling import MASK_POOLINGS, MaskLabelling
from .semantic import REFINE_MIN_IOU, SEMSEG_CROP_MARGIN, SemanticResult, SemanticSegmentation
from .state import ImageState
from .text_instances import Instance, TextInstances


class Predictor(SemanticSegmentation, TextInstances, EverythingMode):
    """SAM's ``SamPredictor`` API plus CLIP tasks, all from one cached backbone pass per image.

    Args:
        model: a merged :class:`SamClip` (every task) or a plain :class:`Sam` (SAM tasks only); it is
            put in eval mode. Inputs go to the device of its parameters.
        bf16: run the networks under bfloat16 autocast, on CPUs the prompt decodes with bf16 image tokens and
            fp32 prompt tokens (all fp32 for little image-sized work, ``mixed_decode_min_elements``; outputs
            are float32); ``None``: only where the
            device multiplies bf16 natively (elsewhere bf16 is emulated and many times slower than fp32).
        backend: ``"torch"`` (default) or ``"onnx"``: the image graphs (backbone + SAM neck; the CLIP head,
            run when a CLIP task first reads the image) and the prompt decoder run on onnxruntime from
            ``onnx_dir`` (written by ``samclip export onnx`` from this model); the text tower, pre- and
            post-processing and the mask poolings' LayerNorm / MLP stay in PyTorch. See :meth:`from_onnx`.
    """


__all__ = [
    "BACKGROUND_PROMPTS", "MASK_POOLINGS", "REFINE_MIN_IOU", "SEMSEG_CROP_MARGIN", "ImageState", "Instance",
    "MaskLabelling", "Predictor", "PredictorBase", "SemanticResult",
]
