"""Train the embedded default's SAM teacher on the scene world (class-agnostic instance masks).

The real SAM architecture at the ``sam-synthetic`` preset, trained with SAM's recipe in small:
per image a set of instances, prompted by noisy ground-truth boxes (single-mask output) and by one
random point (ambiguity-aware: best of the 3 multimask outputs), then one corrective click (a point
in the error region plus the previous mask logits as mask prompt); focal + dice (20:1), plus
IoU-prediction MSE.
It never sees a word. ``python -m samclip.teachers.sam_teacher --out weights/...`` reproduces it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..convert.patch_size import finer_patch_sam, larger_image_sam, with_image_size, with_patch_size
from ..data import HELDOUT_PAIRS
from ..data.banks import build_bank
from ..eval.prompt_seg import prompt_miou
from ..factory import create_sam, load_sam, save_pretrained
from ..losses import sam_loss
from ..models import Sam, sam_preset
from ..precision import resolve_bf16
from ..pretrained import is_registered
from ..prompts import corrective_points, jitter_boxes, masks_to_boxes, sample_points
from .common import TrainLog, cosine_lr, recipe_from_argv, run_trainer_main, write_training_info


@dataclass
class SamTeacherRecipe:
    preset: str = "sam-synthetic"
    train_images: int = 6000
    val_images: int = 200
    steps: int = 3000
    batch_images: int = 8
    prompts_per_image: int = 8
    box_fraction: float = 0.5  # share of each image's prompts that are boxes (the rest: a point + a corrective click)
    box_noise: float = 0.1  # box prompts' coordinate noise, a share of the box's side (SAM's 0.1; at most 20 px)
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 150
    seed: int = 0
    bf16: str = "auto"  # true / false / auto (bf16 only where this CPU multiplies bf16 natively)
    eval_every: int = 1000
    init: str = ""  # continue from these weights (a folder or name) instead of random init
    # train the prompt encoder + mask decoder only, on image embeddings computed once by the frozen image
    # encoder (both orientations, for the flip augmentation): each step is then a decoder-only step. With
    # ``init`` it improves a teacher's masks without changing its image encoder (which a merge distils)
    freeze_encoder: bool = False
    # the encoder's patch size (0: the preset's or the init's). With ``init``, a finer one (e.g. 8 for the
    # 16 of the shipped teacher) starts from the init's weights read at that grid (``convert.finer_patch_sam``)
    patch_size: int = 0
    # the image size the encoder reads (0: the preset's or the init's); the scenes are rendered at it. With
    # ``init``, a larger one (e.g. 512 for the 256 of the shipped teacher: a 32x32 grid at patch 16) starts from
    # the init's weights with the position tensors resized (``convert.larger_image_sam``)
    image_size: int = 0


def _targets(inst: torch.Tensor, gen: torch.Generator, per_image: int) -> torch.Tensor:
    """Pick ``per_image`` instances of each BxSxS instance map -> (B*per_image)xSxS bool masks."""
    out = []
    for m in inst:
        ids = torch.unique(m)
        ids = ids[ids > 0]
        pick = ids[torch.randint(len(ids), (per_image,), generator=gen)]
        out.append(m[None] == pick[:, None, None])
    return torch.cat(out)


def _low_res(masks: torch.Tensor, size: int) -> torch.Tensor:
    """NxSxS bool -> Nx(size)x(size) soft targets (area average)."""
    return F.adaptive_avg_pool2d(masks[:, None].float(), size)[:, 0]


def _encode(model: Sam, images: torch.Tensor, bf16: bool) -> torch.Tensor:
    """BxSxSx3 uint8 -> BxCxhxw image embeddings."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model.image_embeddings(model.preprocess(images.permute(0, 3, 1, 2)))


def sam_training_step(model: Sam, images: torch.Tensor | None, inst: torch.Tensor, gen: torch.Generator,
                      per_image: int, bf16: bool, box_fraction: float = 0.5,
                      embeddings: torch.Tensor | None = None,
                      box_noise: float = 0.1) -> tuple[torch.Tensor, dict[str, float]]:
    """One SAM-style step on a batch: BxSxSx3 uint8 images and BxSxS instance maps -> (loss, logs).

    Per image ``round(per_image * box_fraction)`` box prompts (at least 1) and the rest point prompts
    (at least 1), each point followed by a corrective click. ``embeddings`` (BxCxhxw, from a frozen image
    encoder) skips the encoder; ``images`` may then be None. ``box_noise``: the boxes' coordinate noise as a share
    of their side (:func:`jitter_boxes`).
    """
    s = inst.shape[1]
    n_box = min(per_image - 1, max(1, round(per_image * box_fraction)))
    emb = embeddings if embeddings is not None else _encode(model, images, bf16)
    low = emb.shape[-1] * 4
    logs: dict[str, float] = {}
    total = torch.zeros(())

    box_t = _targets(inst, gen, n_box)
    boxes = jitter_boxes(masks_to_boxes(box_t), gen, frac=box_noise, size=(s, s))
    # a box is unambiguous: SAM trains it on the single-mask output (token 0), as it is used at test time
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        m, iou = model.decode(emb, boxes=boxes, multimask_output=False)
    loss, parts = sam_loss(m, iou, _low_res(box_t, low))
    total = total + loss
    logs["box_miou"] = float(parts["miou"])

    pt_t = _targets(inst, gen, per_image - n_box)
    pts, _ = sample_points(pt_t, gen)
    labels = torch.ones(pts.shape[0], 1, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        m, iou = model.decode(emb, pts[:, None], labels, multimask_output=True)
    tgt_low = _low_res(pt_t, low)
    loss, parts = sam_loss(m, iou, tgt_low)
    total = total + loss
    logs["point_miou"] = float(parts["miou"])

    # corrective click on the best multimask output, fed back with its logits as mask prompt
    with torch.no_grad():
        best = (m.float() - (tgt_low[:, None] * 2 - 1) * 10).abs().flatten(2).mean(-1).argmin(1)
        prev = m[torch.arange(m.shape[0]), best][:, None].float()
        prev_up = F.interpolate(prev, size=(s, s), mode="bilinear", align_corners=False)[:, 0] > 0
        cpts, clab = corrective_points(prev_up, pt_t, gen)
    pts2 = torch.stack([pts, cpts], 1)
    lab2 = torch.stack([labels[:, 0], clab], 1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        m2, iou2 = model.decode(emb, pts2, lab2, mask_input=prev, multimask_output=False)
    loss, parts = sam_loss(m2, iou2, tgt_low)
    total = total + loss
    logs["click2_miou"] = float(parts["miou"])
    return total, logs


@torch.no_grad()
def encoder_embeddings(model: Sam, images: np.ndarray, bf16: bool, chunk: int = 64,
                       progress: bool = False) -> torch.Tensor:
    """NxSxSx3 uint8 -> NxCxhxw image embeddings of the (frozen) image encoder, fp32, in fixed chunks."""
    from tqdm import tqdm

    model.image_encoder.eval()
    out = []
    for start in tqdm(range(0, len(images), chunk), desc="encoder embeddings", unit="chunk", leave=False,
                      disable=not progress):
        out.append(_encode(model, torch.from_numpy(images[start : start + chunk]), bf16).float())
    return torch.cat(out)


def _initial_model(recipe: SamTeacherRecipe) -> Sam:
    """The recipe's starting point: its init (read at ``patch_size`` / ``image_size`` where set) or a fresh
    preset model at them."""
    if not recipe.init:
        config = sam_preset(recipe.preset)
        config = with_patch_size(config, recipe.patch_size) if recipe.patch_size else config
        return create_sam(with_image_size(config, recipe.image_size) if recipe.image_size else config)
    model = load_sam(recipe.init)
    if recipe.patch_size and recipe.patch_size != model.config.image_encoder.patch_size:
        model = finer_patch_sam(model, recipe.patch_size)
    if recipe.image_size and recipe.image_size != model.config.image_encoder.img_size:
        model = larger_image_sam(model, recipe.image_size)
    return model


def train_sam_teacher(recipe: SamTeacherRecipe, out: Path, log_path: Path | None = None) -> dict:
    if recipe.freeze_encoder and not recipe.init:
        raise ValueError("freeze_encoder needs init: a trained teacher whose image encoder stays as it is")
    if recipe.freeze_encoder and (recipe.patch_size or recipe.image_size):
        raise ValueError("freeze_encoder keeps the init's image encoder as it is: it cannot change its patch_size "
                         "or image_size")
    if not recipe.init:
        sam_preset(recipe.preset)  # an unknown preset fails now, not after the scenes are rendered
    elif not (is_registered("sam", recipe.init) or Path(recipe.init).exists()):
        raise FileNotFoundError(f"--init {recipe.init}: no such file or folder, and not a registered SAM name")
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model = _initial_model(recipe).train()
    size = model.config.image_encoder.img_size  # scenes at the size the encoder reads
    t0 = time.time()
    bank = build_bank("train_teacher", recipe.train_images, size, forbidden_pairs=HELDOUT_PAIRS, progress=True)
    val = build_bank("val", recipe.val_images, size)
    render_s = time.time() - t0
    bf16 = resolve_bf16(recipe.bf16)
    cached: tuple[torch.Tensor, torch.Tensor] | None = None  # embeddings of the bank, unflipped and flipped
    if recipe.freeze_encoder:
        model.image_encoder.requires_grad_(False)
        cached = (encoder_embeddings(model, bank.images, bf16, progress=True),
                  encoder_embeddings(model, np.ascontiguousarray(bank.images[:, :, ::-1]), bf16, progress=True))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    log = TrainLog(log_path, total=recipe.steps, desc="sam teacher")
    rng = np.random.default_rng(recipe.seed)
    for step in range(recipe.steps):
        lr = cosine_lr(step, recipe.steps, recipe.warmup, recipe.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(0, len(bank), recipe.batch_images)
        inst = torch.from_numpy(bank.instance_maps[idx])
        flip = rng.random() < 0.5  # horizontal flip (masks are class-agnostic)
        inst = inst.flip(2) if flip else inst
        images, emb = None, None
        if cached is not None:
            emb = cached[int(flip)][torch.from_numpy(idx)]
        else:
            images = torch.from_numpy(bank.images[idx])
            images = images.flip(2) if flip else images
        loss, logs = sam_training_step(model, images, inst, gen, recipe.prompts_per_image, bf16,
                                       recipe.box_fraction, embeddings=emb, box_noise=recipe.box_noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        log.step(step, loss=loss.item(), lr=lr, **logs)
        if recipe.eval_every and (step + 1) % recipe.eval_every == 0 and step + 1 < recipe.steps:
            log.event(step, "val", **prompt_miou(model, val))
            model.train()
    model.eval()
    metrics = prompt_miou(model, val)
    log.event(recipe.steps, "val", **metrics)
    log.close()
    save_pretrained(model, out)
    return write_training_info(out, recipe, metrics, render_s, t0)


def main(argv: list[str] | None = None) -> None:
    recipe, out, log = recipe_from_argv(SamTeacherRecipe, "Train the scene-world SAM teacher from scratch.", argv)
    info = run_trainer_main(train_sam_teacher, recipe, out, log)
    print(json.dumps(info["val"], indent=2), f"\nwall {info['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
