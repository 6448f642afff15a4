"""samclip: merge SAM and CLIP into one vision backbone and serve every zero-shot task from one pass."""

from .allocator import tune_malloc
from .checkpoint import CheckpointError
from .factory import create_clip, create_sam, load_clip, load_model, load_sam, save_pretrained
from .models import CLIP, ClipConfig, Sam, SamClip, SamClipConfig, SamConfig
from .predictor import Predictor
from .pretrained import list_pretrained
from .tokenizer import ClipTokenizer

__version__ = "0.1.0"

__all__ = [
    "CLIP", "CheckpointError", "ClipConfig", "ClipTokenizer", "Predictor", "Sam", "SamClip", "SamClipConfig",
    "SamConfig", "create_clip", "create_sam", "list_pretrained", "load_clip", "load_model", "load_sam",
    "save_pretrained", "tune_malloc",
]
