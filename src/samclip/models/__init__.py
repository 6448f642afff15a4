"""Model building blocks: SAM, CLIP, the merged SAM-CLIP model and their configs."""

from .clip import CLIP, TextTransformer, VisionTransformer
from .clip_head import ClipHead, ClipHeadConfig
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
from .samclip import SamClip, SamClipConfig

__all__ = [
    "CLIP", "CLIP_PRESETS", "ClipConfig", "ClipHead", "ClipHeadConfig", "ImageEncoderConfig",
    "ImageEncoderViT", "MaskDecoder", "MaskDecoderConfig", "PromptEncoder", "SAM_PRESETS", "Sam",
    "SamClip", "SamClipConfig", "SamConfig", "TextTowerConfig", "TextTransformer", "VisionTowerConfig",
    "VisionTransformer", "clip_preset", "sam_preset",
]
