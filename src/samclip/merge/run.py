"""Build a merge run from its config: teachers, student, data streams, evaluator; run; save."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..allocator import tune_malloc
from ..checkpoint import atomic_write_bytes
from ..data.banks import build_bank
from ..eval.prompt_seg import prompt_miou
from ..eval.zeroshot import single_object_eval_set, zero_shot_accuracy
from ..factory import load_clip, load_sam
from ..models import ClipHeadConfig, SamClip
from ..precision import autocast, describe_machine, resolve_bf16
from ..tokenizer import ClipTokenizer
from .config import MergeConfig
from .streams import ClipStream, SamStream, instance_mask_crops
from .teachers import Teachers
from .trainer import MergeTrainer, dist_info, init_distributed


def merged_encoders(model: SamClip, size: int, bf16: bool | None = None,
                    views: tuple[tuple[int, bool], ...] | None = None):  # noqa: ANN201
    """(encode_images, encode_texts) of the merged model's CLIP head at ``size`` px (bf16 None: auto).

    ``views`` ((size, mirrored) pairs, e.g. ``model.config.classify_views()``): each image embedding is the
    normalised mean of the normalised embeddings of these views (test-time augmentation); default one view,
    ``size`` unmirrored."""
    dev = next(model.parameters()).device
    bf16 = resolve_bf16(bf16, dev)
    views = tuple(views or ((size, False),))

    def one_view(x: torch.Tensor, view_size: int, mirrored: bool) -> torch.Tensor:
        if mirrored:
            x = x.flip(-1)
        if x.shape[-1] != view_size:
            x = F.interpolate(x, size=(view_size, view_size), mode="bilinear", antialias=True, align_corners=False)
        return model.encode_image(model.preprocess(x.clamp(0, 255), view_size), normalize=True).float()

    def enc_img(images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(dev).permute(0, 3, 1, 2).float()
        with torch.no_grad(), autocast(dev, bf16):
            out = sum(one_view(x, s, f) for s, f in views)
        return (F.normalize(out, dim=-1) if len(views) > 1 else out).cpu()

    def enc_txt(texts: list[str]) -> torch.Tensor:
        with torch.no_grad(), autocast(dev, bf16):
            return model.encode_text(model.tokenizer(texts).to(dev), normalize=True).float().cpu()

    return enc_img, enc_txt


class SceneEvaluator:
    """Validation metrics on the scene world's val split: CLIP-head zero-shot top-1 and SAM-head mIoU."""

    def __init__(self, n_zero_shot: int, n_val: int, sam_size: int, clip_size: int,
                 render_size: int | None = None) -> None:
        # rendered once at the largest size and resized per evaluated size (as the test report does)
        self.zs = single_object_eval_set("val", n_zero_shot, render_size or clip_size)
        self.val = build_bank("val", n_val, sam_size, workers=1)
        self.clip_size = clip_size

    def zero_shot_by_size(self, model: SamClip, sizes: list[int]) -> dict[int, float]:
        """Val zero-shot top-1 of the CLIP head at each input size (images resized from the eval set)."""
        model.eval()
        out = {}
        for size in sizes:
            enc_img, enc_txt = merged_encoders(model, size)
            out[size] = zero_shot_accuracy(enc_img, enc_txt, self.zs[0], self.zs[1])["top1"]
        return out

    def zero_shot_views(self, model: SamClip, views: tuple[tuple[int, bool], ...]) -> float:
        """Val zero-shot top-1 with each image embedded as the average of ``views`` ((size, mirrored) pairs)."""
        model.eval()
        enc_img, enc_txt = merged_encoders(model, views[0][0], views=views)
        return zero_shot_accuracy(enc_img, enc_txt, self.zs[0], self.zs[1])["top1"]

    def mask_label_accuracy_by_size(self, model: SamClip, sizes: list[int], n_images: int = 120,
                                    pooling: str = "mean") -> dict[int, float]:
        """Val accuracy (percent) of labelling ground-truth instance masks with the 12 shapes by
        ``Predictor.label_masks(pooling=...)`` with the pass read at each size: "mean" (per-patch embeddings
        at ``semseg_size``, the dense path's own validation metric) or "max" (at ``label_size``)."""
        from ..data import SHAPES
        from ..predictor import Predictor

        model.eval()
        config, hits, total = model.config, dict.fromkeys(sizes, 0), 0
        pred = Predictor(model)
        try:
            for j in range(min(n_images, len(self.val))):
                inst, objects = self.val.instance_maps[j], self.val.objects[j]
                ids = [i for i in range(len(objects)) if (inst == i + 1).any()]
                if not ids:
                    continue
                pred.set_image(self.val.images[j])  # one SAM-frame pass; each size's pass is cached beside it
                masks, truth = np.stack([inst == i + 1 for i in ids]), [SHAPES.index(objects[i][0]) for i in ids]
                for size in sizes:
                    model.config = config.replace(**{"semseg_size" if pooling == "mean" else "label_size": size})
                    idx, _ = pred.label_masks(masks, list(SHAPES), pooling=pooling)
                    hits[size] += sum(int(k == t) for k, t in zip(idx, truth))
                total += len(ids)
        finally:
            model.config = config
        return {size: 100.0 * hits[size] / max(1, total) for size in sizes}

    def __call__(self, model: SamClip, sam: bool = True) -> dict[str, float]:
        model.eval()
        enc_img, enc_txt = merged_encoders(model, self.clip_size)
        out = {"zero_shot_top1": zero_shot_accuracy(enc_img, enc_txt, self.zs[0], self.zs[1])["top1"]}
        if sam:
            seg = prompt_miou(model, self.val)
            out.update(box_miou=seg["box_miou"], point_miou=seg["point_miou"])
        return out


class FolderEvaluator:
    """Validation on real data (``eval.classify_dir`` / ``eval.sam_dir``): the CLIP head's zero-shot top-1 at
    ``clip_size`` on an image-folder subset, with the model's prompt templates, and the SAM head's box / point
    mIoU on held-out SA-1B pairs; what the learning / forgetting curves and stage II's early stop read."""

    def __init__(self, cfg: MergeConfig, sam_size: int, clip_size: int, templates: tuple[str, ...]) -> None:
        from ..eval.classification import DEFAULT_TEMPLATES, ZeroShotSet, read_names

        ev = cfg.eval
        self.clip_size = clip_size
        self.zs = None
        if ev.classify_dir:
            labels = read_names(ev.classify_labels) if ev.classify_labels else None
            self.zs = ZeroShotSet(ev.classify_dir, labels, templates or DEFAULT_TEMPLATES, ev.classify_images)
        self.val = None
        if ev.sam_dir:
            val = SamStream.from_sa1b(ev.sam_dir, sam_size, per_image=2, seed=cfg.seed, limit=ev.sam_images)
            n = len(val)
            self.val = SceneBankLike(val.images(np.arange(n)), np.stack([val.instance_map(i) for i in range(n)]))

    def __call__(self, model: SamClip, sam: bool = True) -> dict[str, float]:
        model.eval()
        out: dict[str, float] = {}
        if self.zs is not None:
            out["zero_shot_top1"] = self.zs.score(merged_encoders(model, self.clip_size), self.clip_size)["top1"]
        if sam and self.val is not None:
            seg = prompt_miou(model, self.val)
            out.update(box_miou=seg["box_miou"], point_miou=seg["point_miou"])
        return out


class SceneBankLike:
    """What :func:`samclip.eval.prompt_seg.prompt_miou` reads of a bank: NxSxSx3 images, NxSxS instance maps."""

    def __init__(self, images: np.ndarray, instance_maps: np.ndarray) -> None:
        self.images, self.instance_maps = images, instance_maps

    def __len__(self) -> int:
        return len(self.images)


def load_tokenizer(path: str, context_length: int) -> ClipTokenizer:
    """A tokenizer from ``tokenizer.json``, a folder with vocab.json + merges.txt, or a bpe .txt.gz."""
    p = Path(path)
    if p.is_dir():
        if (p / "tokenizer.json").exists():
            return ClipTokenizer.from_file(p / "tokenizer.json", context_length)
        return ClipTokenizer.from_vocab_merges(p / "vocab.json", p / "merges.txt", context_length)
    if p.suffix == ".gz":
        return ClipTokenizer.from_openai_bpe(p, context_length)
    if p.suffix == ".json":
        return ClipTokenizer.from_file(p, context_length)
    raise ValueError(f"{path}: not a tokenizer (tokenizer.json, vocab/merges folder or bpe .txt.gz)")


def build_student(cfg: MergeConfig) -> tuple[SamClip, Teachers]:
    sam_t = load_sam(cfg.teachers.sam, config=cfg.teachers.sam_format_config or None)
    clip_t = load_clip(cfg.teachers.clip, config=cfg.teachers.clip_format_config or None)
    if cfg.teachers.clip_tokenizer:
        clip_t.tokenizer = load_tokenizer(cfg.teachers.clip_tokenizer, clip_t.config.text.context_length)
    if getattr(clip_t, "tokenizer", None) is None:
        raise ValueError("the CLIP teacher has no tokenizer; the merged model needs one for zero-shot use")
    check_sizes(cfg, sam_t.config.image_encoder.patch_size)
    head = ClipHeadConfig(depth=cfg.head.depth, mlp_hidden=cfg.head.mlp_hidden, out_dim=clip_t.config.embed_dim,
                          dense_pool=cfg.head.dense_pool, refine_pool=cfg.head.refine_pool)
    student = SamClip.from_teachers(sam_t, clip_t, head, clip_size=max(cfg.data.clip_sizes),
                                    semseg_size=max(cfg.data.clip_sizes))
    student.config.replace(tta_sizes=tuple(cfg.head.tta_sizes))  # bad head.tta_sizes fail here, not after training
    student.config = student.config.replace(templates=tuple(cfg.head.templates))
    dev = cfg.torch_device
    student, sam_t, clip_t = student.to(dev), sam_t.to(dev), clip_t.to(dev)
    cache_dir = Path(cfg.data.cache_dir or Path(cfg.out) / "teacher_cache")
    teachers = Teachers(sam_t, clip_t, bf16=cfg.use_bf16, cache=cfg.data.cache_teachers, cache_dir=cache_dir,
                        cache_sam=cfg.data.cache_sam_teacher)
    return student, teachers


def check_outputs(cfg: MergeConfig) -> None:
    """What the run will write to, checked before any work (not found out after the training): ``out`` and its
    ``checkpoints`` and ``model`` folders and the teacher cache must be folders this process can create."""
    out = Path(cfg.out)
    folders = [out, out / "checkpoints", out / "model", Path(cfg.data.cache_dir or out / "teacher_cache")]
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} exists and is not a folder (the run writes a folder there)")
        parent = next((p for p in [folder, *folder.parents] if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"{folder}: cannot be written (its nearest existing folder {parent} is not writable)")


def check_sizes(cfg: MergeConfig, patch: int) -> None:
    """Every student size of the config is a positive multiple of the backbone's patch size (ValueError naming
    the knob), checked when the teachers are known rather than at the stage that first reads the size."""
    for name in ("clip_sizes", "stage3_sizes", "region_sizes"):
        bad = [s for s in getattr(cfg.data, name) if s < patch or s % patch]
        if bad:
            raise ValueError(f"config data.{name} = {getattr(cfg.data, name)}: every size must be a multiple of the "
                             f"backbone's patch size {patch} ({bad[0]} is not)")


def build_streams(cfg: MergeConfig, sam_size: int, progress: bool) -> tuple[ClipStream, SamStream]:
    """D_CLIP and D_SAM of ``cfg.data``; with ``data.clip_mask_crops`` D_CLIP ends with crops of D_SAM's masks."""
    d = cfg.data
    if d.source == "scenes":
        clip = ClipStream.scene_world(d.clip_images, d.clip_render_size, progress, d.clip_single_fraction,
                                      d.clip_hflip)
        sam = SamStream.scene_world(d.sam_images, sam_size, d.prompts_per_image, cfg.seed, progress)
    elif d.source == "folders":
        if not d.clip_dir or not d.sam_dir:
            raise ValueError("data.source = 'folders' needs data.clip_dir and data.sam_dir")
        clip = ClipStream.from_folder(d.clip_dir, d.clip_render_size, hflip=d.clip_hflip)
        sam = SamStream.from_sa1b(d.sam_dir, sam_size, d.prompts_per_image, cfg.seed)
    else:
        raise ValueError(f"unknown data.source {d.source!r}; expected 'scenes' or 'folders'")
    if d.clip_mask_crops > 0:
        clip = clip.with_images(instance_mask_crops(sam, d.clip_mask_crops, d.clip_render_size))
    return clip, sam


def choose_sizes(model: SamClip, evaluator: SceneEvaluator, cfg: MergeConfig) -> dict:
    """Set the passes the model's CLIP-head tasks read from val metrics (sizes never trained at are not
    evaluated: the test report measures them); returns what was measured and chosen.

    - ``clip_size`` (classification): the trained size with the best val zero-shot top-1;
    - ``label_size`` (max-pooled mask labels): the best at labelling val ground-truth masks among the trained
      sizes and region distillation's (0 when it equals ``clip_size``);
    - ``semseg_size`` (per-patch maps): with the dense term, the best at labelling those masks by mean pooling
      of the per-patch embeddings (the dense path's own val metric) among the same sizes; without it,
      ``clip_size`` (that metric sat near chance at every size then, 11-13% with single-token reads, 8% is
      chance: too noisy to choose by).
    """
    sizes = cfg.trained_clip_sizes
    by_size = evaluator.zero_shot_by_size(model, sizes)
    best = max(by_size, key=by_size.get)
    label_sizes = sorted(set(sizes) | (set(cfg.data.region_sizes) if cfg.uses_regions else set()))
    by_label = evaluator.mask_label_accuracy_by_size(model, label_sizes, pooling="max")
    label = max(by_label, key=by_label.get)
    if cfg.dense_weight > 0:
        dense = evaluator.mask_label_accuracy_by_size(model, label_sizes)
        semseg = max(dense, key=dense.get)
    else:  # reported only
        dense, semseg = evaluator.mask_label_accuracy_by_size(model, sizes), best
    model.config = model.config.replace(clip_size=best, semseg_size=semseg, label_size=0 if label == best else label)
    return {"val_zero_shot_by_size": by_size, "val_mask_label_accuracy_by_size": dense,
            "val_mask_max_label_accuracy_by_size": by_label, "label_size": label, "clip_size": best,
            "semseg_size": semseg}


def choose_tta(model: SamClip, evaluator: SceneEvaluator, cfg: MergeConfig, single_view_top1: float) -> dict:
    """Keep the config's classification test-time augmentation (``head.tta_flip`` / ``head.tta_sizes``) in
    ``model.config`` only if its val zero-shot beats ``single_view_top1`` (one view at the chosen
    ``clip_size``); returns what was measured and decided."""
    tta = model.config.replace(tta_flip=cfg.head.tta_flip, tta_sizes=tuple(cfg.head.tta_sizes))
    views = tta.classify_views()
    with_tta = evaluator.zero_shot_views(model, views)
    kept = with_tta > single_view_top1
    if kept:
        model.config = tta
    return {"views": [list(v) for v in views], "top1": with_tta,
            "single_view_top1": single_view_top1, "kept": kept}


def run_merge(cfg: MergeConfig, resume: bool = False, evaluate: bool = True) -> dict:
    """The whole merge. Returns a summary; the model is saved to ``<out>/model``."""
    t0 = time.time()
    tune_malloc()  # large CPU buffers stay in the heap: token caches 30% faster here (samclip.allocator)
    init_distributed()
    rank, world = dist_info()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    setup_s: dict[str, float] = {}  # where the time before the first step goes
    check_outputs(cfg)
    tic = time.time()
    student, teachers = build_student(cfg)
    setup_s["models"] = time.time() - tic
    sam_size = student.img_size
    tic = time.time()
    clip_stream, sam_stream = build_streams(cfg, sam_size, progress=rank == 0)
    setup_s["streams"] = time.time() - tic
    evaluator = None
    tic = time.time()
    if evaluate and cfg.data.source == "scenes" and cfg.eval.every:
        evaluator = SceneEvaluator(cfg.eval.zero_shot_images, cfg.eval.val_images, sam_size,
                                   max(cfg.data.clip_sizes), max(cfg.data.clip_sizes + cfg.data.stage3_sizes))
    elif evaluate and cfg.eval.every and (cfg.eval.classify_dir or cfg.eval.sam_dir):
        evaluator = FolderEvaluator(cfg, sam_size, student.config.clip_size, student.config.templates)
    setup_s["evaluator"] = time.time() - tic
    trainer = MergeTrainer(cfg, student, teachers, clip_stream, sam_stream, evaluator)
    tic = time.time()
    state = trainer.run(resume=resume)
    train_s = time.time() - tic
    tic = time.time()
    out = Path(cfg.out)
    summary = {"world_size": world, "stopped_early": state.stopped_early, "bf16": cfg.use_bf16,
               "machine": describe_machine(cfg.torch_device), "setup_s": setup_s, "train_s": train_s,
               "history": state.history}
    if rank == 0 and isinstance(evaluator, SceneEvaluator):  # sizes and TTA are chosen on the scene world's val
        summary.update(choose_sizes(student, evaluator, cfg))
        if cfg.head.tta_flip or cfg.head.tta_sizes:
            summary["val_zero_shot_tta"] = choose_tta(student, evaluator, cfg,
                                                      summary["val_zero_shot_by_size"][student.config.clip_size])
    if rank == 0:
        student.eval()
        from ..factory import save_pretrained

        save_pretrained(student, out / "model")
        summary["final_eval_and_save_s"] = time.time() - tic
    summary["wall_s"] = time.time() - t0
    if rank == 0:
        atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        if state.history:
            from .curves import draw_curves

            draw_curves(state.history, out / "curves.png")
    return summary
