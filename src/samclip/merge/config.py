"""One config per merge run (TOML), every knob in it, command-line overrides with ``--set a.b=v``.

The model architecture is NOT repeated here: it comes from the teachers' self-describing
checkpoints plus the ``[head]`` section. The resolved config is saved beside the checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..inference.crops import CROP_PAD
from ..inference.image_input import REGION_CONTEXT, REGION_MIN_COVER

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class TeachersConfig:
    sam: str = "tiny-synthetic"  # name, our folder, segment-anything .pth, HF folder ...
    clip: str = "tiny-synthetic"
    sam_format_config: str = ""  # optional preset override for the SAM checkpoint
    clip_format_config: str = ""
    clip_tokenizer: str = ""  # tokenizer.json, a vocab.json + merges.txt folder, or OpenAI's bpe .txt.gz


@dataclass
class HeadConfig:
    depth: int = 3
    mlp_hidden: int = 256
    dense_pool: int = 1  # the model's per-patch max-pool window (ClipHeadConfig.dense_pool; not trained)
    refine_pool: int = 0  # the window that places the SAM-head refinement's prompts (ClipHeadConfig; 0: dense_pool)
    # test-time augmentation candidate for classification (SamClipConfig.tta_flip / tta_sizes): the merge
    # measures val zero-shot with and without it at the chosen clip_size and keeps it only if it is better
    tta_flip: bool = False
    tta_sizes: list[int] = field(default_factory=list)
    # the merged model's zero-shot prompt templates (SamClipConfig.templates; "{}" = the class name; --set with
    # "|" between them); empty: the scene world's (the embedded default)
    templates: list[str] = field(default_factory=list)


@dataclass
class DataConfig:
    source: str = "scenes"  # "scenes" (the scene world) or "folders" (real data, see paths below)
    clip_images: int = 12000  # scene world: size of D_CLIP
    sam_images: int = 3000  # scene world: size of D_SAM
    clip_render_size: int = 192  # scene world: D_CLIP images are rendered at this size
    clip_single_fraction: float = 0.0  # scene world: share of single-object scenes in D_CLIP
    clip_hflip: bool = False  # D_CLIP also holds every image mirrored left-right (2N items, see ClipStream)
    clip_dir: str = ""  # real data: image folder or folder of .tar shards for D_CLIP
    sam_dir: str = ""  # real data: SA-1B style folder (image + per-image COCO-RLE json)
    clip_sizes: list[int] = field(default_factory=lambda: [128, 192])  # student sizes, stages I-II
    stage3_sizes: list[int] = field(default_factory=lambda: [128, 192, 256])
    clip_batch: int = 64
    sam_batch: int = 4
    # each rank's D_CLIP and D_SAM batches run as this many sequential forward / backward passes whose gradients
    # add up to the whole batch's (gradient accumulation: the paper's 2048 + 32 images per step on fewer GPUs)
    micro_batches: int = 1
    # > 0: more chunks where needed so that each D_CLIP chunk holds at most this many image tokens (images x
    # (size / patch)^2): stage III's 1024 px steps split further than its 224 px ones (0: micro_batches alone)
    micro_batch_tokens: int = 0
    prompts_per_image: int = 4
    cache_teachers: bool = True
    cache_sam_teacher: bool = True  # with cache_teachers, the SAM side too: 12.6 MB per image at ViT-B (off for SA-1B)
    stage1_token_cache: bool = False  # hold the frozen backbone's tokens of all of D_CLIP in memory in stage I
    # stage III (backbone frozen again): tokens of the first N D_CLIP images at every stage3 size held in
    # memory, and stage III draws its batches from those N; 0 = off (every step runs the backbone)
    stage3_token_cache_images: int = 0
    region_images: int = 16  # region distillation (region_weight > 0): D_SAM images per stage-I step
    # a region's tokens (as the Predictor's label_masks): patches its mask covers >= this share of, grown by
    # region_context rings of neighbouring patches
    region_min_cover: float = REGION_MIN_COVER
    region_context: int = REGION_CONTEXT
    # a region's target: the CLIP teacher's embedding of its mask's crop, the square of side
    # (1 + region_crop_pad) x the mask's longer box side (samclip.inference.mask_crops)
    region_crop_pad: float = CROP_PAD
    # student sizes of region distillation, one drawn per step; empty: the step's D_CLIP size (data.clip_sizes, or
    # data.stage3_sizes in stage III)
    region_sizes: list[int] = field(default_factory=list)
    # each D_SAM image's background as one more region: the tokens its masks together cover at most
    # region_background_max_cover of, target the teacher's embedding of the image with every mask grey
    region_background: bool = False
    region_background_max_cover: float = 0.1
    # crop distillation (NOT in the SAM-CLIP paper): D_CLIP also holds crops of this many D_SAM instance masks
    # (samclip.inference.mask_crops at its default pad, grey outside the mask), distilled like any D_CLIP image,
    # so that labelling a mask by its crop (Predictor pooling "crop") sees inputs like these in training; 0 = off
    clip_mask_crops: int = 0
    cache_dir: str = ""  # default: <out>/teacher_cache


@dataclass
class StageConfig:
    steps: int = 0
    lr: float = 8e-4
    weight_decay: float = 0.05
    warmup: int = 20


@dataclass
class EvalConfig:
    every: int = 100
    val_images: int = 120  # scene world val split (forgetting / learning curves)
    zero_shot_images: int = 300
    early_stop_patience: int = 2  # stage II stops after this many evals of growing forgetting
    early_stop_tolerance: float = 0.5  # mIoU points of drop that count as "growing"
    # real data (data.source = "folders"): validation sets of the curves and of stage II's early stop
    classify_dir: str = ""  # zero-shot: an image folder with one subfolder per class (ImageNet's val layout)
    classify_labels: str = ""  # its class names, one per line in sorted folder order (default: the folder names)
    classify_images: int = 1000  # taken round-robin over the classes
    sam_dir: str = ""  # box / point mIoU: SA-1B style image + json pairs held out of data.sam_dir
    sam_images: int = 50


@dataclass
class MergeConfig:
    out: str = "runs/merge"
    seed: int = 0
    bf16: str = "auto"  # true / false / auto: bf16 autocast only where the hardware multiplies bf16 natively
    device: str = "auto"  # auto: cuda:<LOCAL_RANK> when CUDA is available, else cpu; or "cpu", "cuda:N"
    grad_checkpointing: bool = False
    checkpoint_every: int = 100
    threads: int = 0  # 0: torch default
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage1: StageConfig = field(default_factory=lambda: StageConfig(steps=200, lr=8e-4))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(steps=400, lr=4e-4))
    stage3: StageConfig = field(default_factory=lambda: StageConfig(steps=100, lr=8e-4))
    lambda_sam: float = 10.0
    backbone_lr_mult: float = 0.1
    # weight decay (each stage's weight_decay) on every trained parameter, as torch.optim.AdamW does by default,
    # instead of on weight matrices only (false: no decay on biases, norm gains, position tables and learned
    # tokens, as timm and open_clip train; samclip.merge.optim)
    decay_all_parameters: bool = False
    # stage I only, NOT in the SAM-CLIP paper (0 = the paper's recipe): weight of the region-distillation
    # term (samclip.merge.regions): masked max-pool of the CLIP head over each D_SAM mask vs the teacher's crop
    region_weight: float = 0.0
    region_start: int = 0  # the first stage-I step with the region term (the head learns whole images first)
    # per-token term of region distillation (0 = off): every token's own read vs the target of the mask (or the
    # background) that owns it, so that the per-patch map (dense_pool = 1) means what is under each patch
    dense_weight: float = 0.0
    # the stages region distillation runs in, with the head only training and the backbone frozen: 1 (from
    # region_start) and / or 3 (every step, on the backbone as stage II left it)
    region_stages: list[int] = field(default_factory=lambda: [1])
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not set(self.region_stages) <= {1, 3}:
            raise ValueError(f"config region_stages must list stages 1 and / or 3 (the backbone is frozen there), "
                             f"got {self.region_stages}")

    @property
    def uses_regions(self) -> bool:
        """Whether region distillation runs (its region or its dense term has weight)."""
        return self.region_weight > 0 or self.dense_weight > 0

    @property
    def trained_clip_sizes(self) -> list[int]:
        """The CLIP-head input sizes the run trains at: ``data.clip_sizes``, plus ``data.stage3_sizes`` when
        stage III has steps (sorted, unique). The final evaluation chooses ``clip_size`` among these."""
        sizes = set(self.data.clip_sizes) | (set(self.data.stage3_sizes) if self.stage3.steps > 0 else set())
        return sorted(sizes)

    @property
    def use_bf16(self) -> bool:
        """``bf16`` resolved for this machine (see :mod:`samclip.precision`)."""
        from ..precision import resolve_bf16

        return resolve_bf16(self.bf16, self.torch_device)

    @property
    def torch_device(self) -> torch.device:
        """``device`` resolved: under torchrun each process takes the GPU of its LOCAL_RANK."""
        if self.device == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            return torch.device("cpu")
        try:
            dev = torch.device(self.device)
        except RuntimeError as e:
            raise ValueError(f"config device: {e} (expected auto, cpu or cuda[:N])") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device = {self.device!r} but CUDA is not available")
        return dev

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"unknown config key {where}{key!r}; known: {', '.join(sorted(fields))}")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"config {where}{key} must be a table")
            value = _build(type(default), value, f"{where}{key}.")
        else:
            value = _coerce(value, default, f"{where}{key}")
        kwargs[key] = value
    return cls(**kwargs)


_STRING_LISTS = {"head.templates"}  # list keys whose items are strings (every other list holds integers)


def _integer(value: Any, name: str, what: str = "an integer") -> int:
    """An int from TOML (an integral float is taken; a bool or a fraction is not) or from a ``--set`` string."""
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError(f"config {name} must be {what}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        raise ValueError(f"config {name} must be {what}, got {value!r}")
    return int(value)


def _coerce(value: Any, default: Any, name: str) -> Any:
    """``value`` (TOML-typed, or a string from ``--set``) as the type of the knob's ``default``; ValueError naming
    the knob where it is another kind of value (no silent truncation: steps = 2.7, steps = true, out = [1])."""
    if isinstance(default, bool):
        if isinstance(value, str):
            value = {"true": True, "false": False, "1": True, "0": False}.get(value.lower(), value)
        if not isinstance(value, bool):
            raise ValueError(f"config {name} must be true/false, got {value!r}")
        return value
    if isinstance(default, int):
        return _integer(value, name)
    if isinstance(default, float):
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise ValueError(f"config {name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"config {name} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, list) and name in _STRING_LISTS:
        if isinstance(value, str):  # --set head.templates="a photo of a {}.|a {} in the wild"
            value = [v for v in value.split("|") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"config {name} must be a list of strings, got {value!r}")
        return list(value)
    if isinstance(default, list):
        what = "a list of integers, e.g. [64, 128] (--set: 64,128)"
        if isinstance(value, str):  # --set key=64,128 (or TOML-style [64, 128])
            value = [v for v in value.strip().strip("[]").split(",") if v.strip()]
        elif not isinstance(value, list):
            value = [value]  # one size: clip_sizes = 128 means [128]
        return [_integer(v, name, what) for v in value]
    if name == "bf16" and isinstance(value, bool):  # bf16 = true / false in TOML, beside "auto"
        return str(value).lower()
    if not isinstance(value, str):
        raise ValueError(f"config {name} must be a string, got {value!r}")
    return value


def _set_path(data: dict[str, Any], dotted: str, value: str) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {k} is not a table")
    node[keys[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> MergeConfig:
    """Read a TOML run config and apply ``key.sub=value`` overrides (validated against the schema)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ValueError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: invalid TOML ({e})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a text file (a TOML run config is expected)") from None
        except IsADirectoryError:
            raise ValueError(f"{path}: a folder, not a TOML run config") from None
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set_path(data, key.strip(), value.strip())
    cfg = _build(MergeConfig, data, "")
    cfg.bf16 = str(cfg.bf16).lower()
    check_ranges(cfg)
    cfg.use_bf16  # noqa: B018 - validates bf16 and device now, not mid-run
    return cfg


#: value ranges of the numeric knobs, checked when a config is loaded (name: (low, high), None = unbounded);
#: lists are checked item by item
_RANGES: dict[str, tuple[float, float | None]] = {
    "seed": (0, 2**32 - 1), "checkpoint_every": (1, None), "threads": (0, None), "lambda_sam": (0, None),
    "backbone_lr_mult": (0, None),
    "region_weight": (0, None), "region_start": (0, None), "dense_weight": (0, None),
    "head.depth": (1, None), "head.mlp_hidden": (1, None), "head.dense_pool": (1, None), "head.refine_pool": (0, None),
    "head.tta_sizes": (1, None),
    "data.clip_images": (1, None), "data.sam_images": (1, None), "data.clip_render_size": (1, None),
    "data.clip_single_fraction": (0, 1), "data.clip_sizes": (1, None), "data.stage3_sizes": (1, None),
    "data.clip_batch": (1, None), "data.sam_batch": (1, None), "data.prompts_per_image": (1, None),
    "data.stage3_token_cache_images": (0, None), "data.region_images": (1, None), "data.region_min_cover": (0, 1),
    "data.region_context": (0, None), "data.region_crop_pad": (0, 10), "data.region_sizes": (1, None),
    "data.region_background_max_cover": (0, 1), "data.clip_mask_crops": (0, None),
    "eval.every": (0, None), "eval.val_images": (1, None), "eval.zero_shot_images": (1, None),
    "eval.classify_images": (1, None), "eval.sam_images": (1, None), "data.micro_batches": (1, None),
    "data.micro_batch_tokens": (0, None),
    "eval.early_stop_patience": (1, None), "eval.early_stop_tolerance": (0, None),
    **{f"stage{i}.{k}": r for i in (1, 2, 3)
       for k, r in (("steps", (0, None)), ("lr", (0, None)), ("weight_decay", (0, None)), ("warmup", (0, None)))},
}
#: knobs that must also be above their low bound, not equal to it
_ABOVE_LOW = {f"stage{i}.lr" for i in (1, 2, 3)}


def check_ranges(cfg: MergeConfig) -> None:
    """ValueError naming the first knob out of its range (negative steps, a zero batch, a NaN learning rate ...),
    so that a bad value stops the run before any work rather than mid-run or silently."""
    if not str(cfg.out).strip():
        raise ValueError("config out is empty; give the run's output folder")
    for name, bounds in _RANGES.items():
        value: Any = cfg
        for part in name.split("."):
            value = getattr(value, part)
        low, high = bounds
        for v in value if isinstance(value, list) else [value]:
            ok = math.isfinite(v) and (v > low if name in _ABOVE_LOW else v >= low) and (high is None or v <= high)
            want = f"> {low}" if name in _ABOVE_LOW else f">= {low}" if high is None else f"in [{low}, {high}]"
            if not ok:
                raise ValueError(f"config {name} = {v!r}: must be {want}")
    if not cfg.data.clip_sizes:
        raise ValueError("config data.clip_sizes is empty; give at least one student size")
    for t in cfg.head.templates:
        if t.count("{}") != 1:
            raise ValueError(f"config head.templates: {t!r} needs one {{}} for the class name")
    if cfg.stage3.steps and not cfg.data.stage3_sizes:
        raise ValueError("config data.stage3_sizes is empty but stage3.steps > 0")


def dump_config(cfg: MergeConfig) -> str:
    """The resolved config as TOML (written beside the checkpoints)."""
    lines: list[str] = []
    scalars = {k: v for k, v in cfg.to_dict().items() if not isinstance(v, dict)}
    tables = {k: v for k, v in cfg.to_dict().items() if isinstance(v, dict)}
    for k, v in scalars.items():
        lines.append(f"{k} = {json.dumps(v)}")
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"
