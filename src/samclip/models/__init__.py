"""Model building blocks: SAM, CLIP and their configs."""

from .clip import CLIP, TextTransformer, VisionTransformer
from .configs import (
    ClipConfig,
    ImageEncoderConfig,
    MaskDecoderConfig,
    SamConfig,
    TextTowerConfig,
    VisionTowerConfig,
)
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .presets import CLIP_PRESETS, SAM_PRESETS, clip_preset, sam_preset
from .prompt_encoder import PromptEncoder
from .sam import Sam

__all__ = [
    "CLIP", "CLIP_PRESETS", "ClipConfig", "ImageEncoderConfig", "ImageEncoderViT", "MaskDecoder",
    "MaskDecoderConfig", "PromptEncoder", "SAM_PRESETS", "Sam", "SamConfig", "TextTowerConfig",
    "TextTransformer", "VisionTowerConfig", "VisionTransformer", "clip_preset", "sam_preset",
]
