"""Helpers of :class:`samclip.predictor.Predictor`: image input and coordinate mapping, everything-mode
(point grid, stability score, NMS) and connected regions."""

from .crops import CROP_PAD, mask_crops
from .everything import box_iou, box_nms, box_xyxy_to_xywh, build_point_grid, mask_iou, stability_score
from .image_input import (
    REGION_CONTEXT,
    REGION_MIN_COVER,
    clip_points,
    covered_tokens,
    frame_to_original,
    mask_to_grid_weights,
    original_to_frame,
    preprocess_shape,
    resize_uint8,
    to_rgb_uint8,
    valid_grid,
)
from .regions import connected_components, peak_points

__all__ = [
    "CROP_PAD", "REGION_CONTEXT", "REGION_MIN_COVER",
    "box_iou", "box_nms", "box_xyxy_to_xywh", "build_point_grid", "clip_points", "connected_components",
    "covered_tokens", "frame_to_original", "mask_crops", "mask_iou", "mask_to_grid_weights", "original_to_frame",
    "peak_points", "preprocess_shape", "resize_uint8", "stability_score", "to_rgb_uint8", "valid_grid",
]
