"""Deployment exports of the merged model: ONNX graphs (:func:`export_onnx`) and an onnxruntime backend
(:class:`OnnxBackend`); the SAM side in segment-anything's own ONNX interface (:func:`export_sam_onnx`) and as
a segment-anything checkpoint (:func:`export_sam_checkpoint`).
onnx / onnxruntime are optional dependencies (``pip install 'samclip[onnx]'``) and are imported only when used."""

from .onnx_export import export_onnx
from .onnx_runtime import OnnxBackend, read_manifest
from .sam_checkpoint import export_sam_checkpoint
from .sam_onnx import export_sam_onnx

__all__ = ["OnnxBackend", "export_onnx", "export_sam_checkpoint", "export_sam_onnx", "read_manifest"]
