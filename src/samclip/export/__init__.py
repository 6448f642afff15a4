"""Deployment exports of the merged model: ONNX graphs (:func:`export_onnx`) and an onnxruntime backend
(:class:`OnnxBackend`). onnx / onnxruntime are optional dependencies (``pip install 'samclip[onnx]'``)
and are imported only when used."""

from .onnx_export import export_onnx
from .onnx_runtime import OnnxBackend, read_manifest

__all__ = ["OnnxBackend", "export_onnx", "read_manifest"]
