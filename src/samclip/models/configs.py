"""Architecture configs as plain frozen dataclasses.

A config says *what* a network looks like; it never says where weights come from (that is the
registry in ``samclip.pretrained``). Every config round-trips through ``to_dict`` / ``from_dict`` so
checkpoints can describe themselves (``config.json`` beside ``model.safetensors``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def _matches(value: Any, tp: Any) -> bool:
    """Whether a JSON / TOML value fits a config field's annotation (int, float, bool, str, tuples of them,
    unions, nested config dataclasses)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return isinstance(value, tp | dict)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a (possibly nested) config dataclass from a dict, rejecting unknown fields and values of the wrong
    type (``ValueError`` naming the field)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping of config fields, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config fields {unknown}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _NESTED.get((cls.__name__, name))
        if not _matches(value, hints.get(name, Any)) and not (sub is not None and isinstance(value, dict)):
            raise ValueError(f"{cls.__name__}.{name}: expected {_type_name(hints[name])}, got {value!r}")
        _check_value(cls.__name__, name, value)
        if sub is not None and isinstance(value, dict):
            value = _from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


# fields that must be > 0 wherever a config names them (a zero or negative std divides by zero or flips images)
_POSITIVE_FIELDS = frozenset({"pixel_std", "image_std", "layer_norm_eps"})


def _check_value(owner: str, name: str, value: Any) -> None:
    """Reject NaN / infinite numbers in any config field, and non-positive ones in ``_POSITIVE_FIELDS``
    (``ValueError`` naming the field): a config file can hold them, and a model built from them answers NaN."""
    items = value if isinstance(value, list | tuple) else [value]
    numbers = [v for v in items if isinstance(v, float | int) and not isinstance(v, bool)]
    if any(not math.isfinite(v) for v in numbers):
        raise ValueError(f"{owner}.{name}: expected finite numbers, got {value!r}")
    if name in _POSITIVE_FIELDS and any(v <= 0 for v in numbers):
        raise ValueError(f"{owner}.{name}: expected numbers > 0, got {value!r}")


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


class _Config:
    """Mixin: dict round-trip for config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):  # noqa: ANN206
        return _from_dict(cls, data)

    def replace(self, **changes: Any):  # noqa: ANN201
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


# ----------------------------------------------------------------------------------------------- SAM
@dataclass(frozen=True)
class ImageEncoderConfig(_Config):
    """ViT-Det image encoder of SAM.

    ``img_size`` is the native (pre-training) resolution: the absolute position embedding has
    ``img_size // patch_size`` cells per side and the global-attention relative-position tables have
    ``2 * img_size // patch_size - 1`` rows. The encoder runs at any multiple of ``patch_size``.
    """

    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "out_chans", "in_chans"):
            if getattr(self, name) < 1:
                raise ValueError(f"ImageEncoderConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class MaskDecoderConfig(_Config):
    """SAM's two-way-transformer mask decoder. ``transformer_dim`` equals the encoder's ``out_chans``."""

    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_heads: int = 8
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


@dataclass(frozen=True)
class SamConfig(_Config):
    """A whole SAM: image encoder, prompt encoder (derived sizes) and mask decoder.

    ``pixel_mean`` / ``pixel_std`` are in 0-255 RGB units, as in segment-anything.
    """

    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    mask_in_chans: int = 16
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    mask_threshold: float = 0.0

    @property
    def prompt_embed_dim(self) -> int:
        return self.image_encoder.out_chans


# ---------------------------------------------------------------------------------------------- CLIP
@dataclass(frozen=True)
class VisionTowerConfig(_Config):
    """CLIP image tower. ``layers`` an int: a ViT (class token, pre/post LayerNorm, projection).
    ``layers`` a tuple of 4 stage depths: OpenAI's ModifiedResNet (``width`` = stem width, ``heads`` =
    attention-pool heads, ``patch_size`` unused, total stride 32), as in OpenAI's ``build_model``."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int | tuple[int, ...] = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"  # OpenAI CLIP: quick_gelu; most open_clip / DataComp models: gelu
    layer_norm_eps: float = 1e-5

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.layers, tuple)

    @property
    def stride(self) -> int:
        """Input pixels per cell of the final feature grid (the patch size, or 32 for a ResNet)."""
        return 32 if self.is_resnet else self.patch_size

    @property
    def grid_size(self) -> int:
        """Side of the final feature grid at ``image_size``."""
        return self.image_size // self.stride


@dataclass(frozen=True)
class TextTowerConfig(_Config):
    """CLIP causal text transformer. The sequence feature is taken at the first ``eot_token_id``."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    sot_token_id: int = 49406
    eot_token_id: int = 49407
    pad_token_id: int = 0


@dataclass(frozen=True)
class ClipConfig(_Config):
    """A whole CLIP. ``image_mean`` / ``image_std`` are in 0-1 RGB units, as in OpenAI CLIP."""

    embed_dim: int = 512
    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    init_logit_scale: float = 2.6592  # log(1 / 0.07)


_NESTED: dict[tuple[str, str], type] = {
    ("SamConfig", "image_encoder"): ImageEncoderConfig,
    ("SamConfig", "mask_decoder"): MaskDecoderConfig,
    ("ClipConfig", "vision"): VisionTowerConfig,
    ("ClipConfig", "text"): TextTowerConfig,
}


def register_nested(owner: str, field_name: str, cls: type) -> None:
    """Let another config module declare a nested config field (used by the merged model config)."""
    _NESTED[(owner, field_name)] = cls
