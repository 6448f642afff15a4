"""Procedural scene world (synthetic scenes with masks and captions) used to train and evaluate samclip.

See :mod:`samclip.data.scenes` for array shapes and conventions.
"""

from samclip.data.captions import class_prompt_templates, class_prompts, make_caption
from samclip.data.grid import write_grid
from samclip.data.scenes import (
    CATEGORY_IDS,
    COLOURS,
    HELDOUT_PAIRS,
    NUM_CLASSES,
    SPLIT_OFFSETS,
    Scene,
    SceneObject,
    composition_scene,
    generate_scene,
    single_object_scene,
    split_seeds,
)
from samclip.data.shapes import SHAPES, TEXTURES

__all__ = [
    "CATEGORY_IDS",
    "COLOURS",
    "HELDOUT_PAIRS",
    "NUM_CLASSES",
    "SHAPES",
    "SPLIT_OFFSETS",
    "TEXTURES",
    "Scene",
    "SceneObject",
    "class_prompt_templates",
    "class_prompts",
    "composition_scene",
    "generate_scene",
    "make_caption",
    "single_object_scene",
    "split_seeds",
    "write_grid",
]
