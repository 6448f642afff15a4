"""Train the embedded default's CLIP teacher on (scene image, caption) pairs. It never sees a mask.

The real CLIP architecture at the ``clip-synthetic`` preset (64 px images, OpenAI's ModifiedResNet
image tower at stem width 16, a 4-layer text transformer) with a CLIP-style byte-level BPE trained on
the scene world's captions; symmetric InfoNCE with a learned temperature. (A 6-layer ViT tower at
patch 8 was tried first: trained from scratch here it stayed near chance on shape, even supervised.)
Teacher-training captions never contain the held-out (colour, shape) pairs.
``python -m samclip.teachers.clip_teacher --out weights/...`` reproduces it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..data import HELDOUT_PAIRS, SHAPES, class_prompts
from ..data.banks import SceneBank, build_bank
from ..devices import model_device
from ..eval.zeroshot import retrieval_recall, single_object_eval_set, zero_shot_accuracy
from ..factory import save_pretrained
from ..losses import clip_contrastive_loss
from ..models import CLIP, clip_preset
from ..precision import autocast, resolve_bf16
from ..tokenizer import ClipTokenizer
from .common import TrainLog, cosine_lr, recipe_from_argv, run_trainer_main, write_training_info


@dataclass
class ClipTeacherRecipe:
    preset: str = "clip-synthetic"
    scene_images: int = 30000
    single_images: int = 30000
    steps: int = 3000
    batch: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 150
    seed: int = 0
    bf16: str = "auto"  # true / false / auto (bf16 only where this CPU multiplies bf16 natively)
    eval_every: int = 1000
    vocab_size: int = 512
    shape_only_single: float = 0.5  # chance a single-object caption names only the shape
    shape_only_scene: float = 0.2  # chance a multi-object caption names only the shapes


# Natural captions do not always name colours: shape-only phrasings teach the text tower that a shape
# word alone denotes the shape (without them, zero-shot shape classification stays near chance while
# colour-driven retrieval works). Phrasings differ from the evaluation templates in captions.py.
_SHAPE_ONLY = ("a {}", "one {}", "an image with a {}", "a {} on a background", "{}", "a single {} in the middle",
               "a picture showing a {}", "the {}")


def shape_only_caption(objects: list[tuple[str, str, str]], rng: np.random.Generator) -> str:
    """A caption naming only the shapes of ``objects`` ((category, colour, texture) tuples)."""
    from ..data.captions import fix_articles

    shapes = [o[0] for o in objects]
    if len(shapes) == 1:
        return fix_articles(_SHAPE_ONLY[rng.integers(len(_SHAPE_ONLY))].format(shapes[0]))
    named = [fix_articles(f"a {s}") for s in shapes[:3]]
    text = ", ".join(named[:-1]) + " and " + named[-1]
    return text if len(shapes) <= 3 else f"{text} and {len(shapes) - 3} more shapes"


def clip_pixels(model: CLIP, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """BxHxWx3 uint8 RGB -> Bx3xHxW normalised input of the CLIP image tower, on the model's device."""
    x = torch.as_tensor(images).to(model_device(model)).permute(0, 3, 1, 2).float() / 255.0
    return model.normalize_images(x)


def clip_encoders(model: CLIP, tokenizer: ClipTokenizer, bf16: bool | None = None):  # noqa: ANN201
    """(encode_images, encode_texts) callables for ``samclip.eval.zeroshot`` (bf16 None: auto), running on the
    model's device and returning float32 embeddings on the CPU."""
    dev = model_device(model)
    bf16 = resolve_bf16(bf16, dev)

    def enc_img(images: np.ndarray) -> torch.Tensor:
        with torch.no_grad(), autocast(dev, bf16):
            size = model.config.vision.image_size
            x = clip_pixels(model, images)
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            return model.encode_image(x, normalize=True).float().cpu()

    def enc_txt(texts: list[str]) -> torch.Tensor:
        with torch.no_grad(), autocast(dev, bf16):
            return model.encode_text(tokenizer(texts).to(dev), normalize=True).float().cpu()

    return enc_img, enc_txt


def build_tokenizer(captions: list[str], vocab_size: int, context_length: int) -> ClipTokenizer:
    corpus = list(captions) + [p for s in SHAPES for p in class_prompts(s)]
    corpus += [t.format(s) for s in SHAPES for t in _SHAPE_ONLY]
    return ClipTokenizer.train(corpus, vocab_size=vocab_size, context_length=context_length)


def evaluate_clip(model: CLIP, tokenizer: ClipTokenizer, split: str = "val", n_single: int = 600,
                  n_scenes: int = 500) -> dict:
    """Zero-shot shape top-1 on single-object scenes and caption retrieval on multi-object scenes."""
    size = model.config.vision.image_size
    enc_img, enc_txt = clip_encoders(model, tokenizer)
    imgs, labels = single_object_eval_set(split, n_single, size)
    scenes = build_bank(split, n_scenes, size, workers=1)
    return {"zero_shot": zero_shot_accuracy(enc_img, enc_txt, imgs, labels),
            "retrieval": retrieval_recall(enc_img, enc_txt, scenes.images, scenes.captions)}


def train_clip_teacher(recipe: ClipTeacherRecipe, out: Path, log_path: Path | None = None) -> dict:
    torch.manual_seed(recipe.seed)
    t0 = time.time()
    cfg = clip_preset(recipe.preset)
    size = cfg.vision.image_size
    bank = SceneBank.concat([
        build_bank("train_teacher", recipe.scene_images, size, forbidden_pairs=HELDOUT_PAIRS, progress=True),
        build_bank("train_teacher", recipe.single_images, size, kind="single", start=5_000_000,
                   forbidden_pairs=HELDOUT_PAIRS, progress=True),
    ])
    render_s = time.time() - t0
    tokenizer = build_tokenizer(bank.captions, recipe.vocab_size, cfg.text.context_length)
    cfg = cfg.replace(text=cfg.text.replace(
        vocab_size=tokenizer.vocab_size, sot_token_id=tokenizer.sot_token_id,
        eot_token_id=tokenizer.eot_token_id,
    ))
    model = CLIP.from_config(cfg).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98))
    log = TrainLog(log_path, total=recipe.steps, desc="clip teacher")
    rng = np.random.default_rng(recipe.seed)
    bf16 = resolve_bf16(recipe.bf16)
    for step in range(recipe.steps):
        lr = cosine_lr(step, recipe.steps, recipe.warmup, recipe.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.choice(len(bank), recipe.batch, replace=False)
        captions = []
        for i in idx:
            objs = bank.objects[i]
            p = recipe.shape_only_single if len(objs) == 1 else recipe.shape_only_scene
            captions.append(shape_only_caption(objs, rng) if rng.random() < p else bank.captions[i])
        images = torch.from_numpy(bank.images[idx])
        if rng.random() < 0.5:
            images = images.flip(2)
        # short sequences (65 / 32 tokens): the math SDPA kernel trains ~1.3x faster than flash on CPU
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), sdpa_kernel(SDPBackend.MATH):
            img = model.encode_image(clip_pixels(model, images), normalize=True)
            txt = model.encode_text(tokenizer(captions), normalize=True)
            loss = clip_contrastive_loss(img.float(), txt.float(), model.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        log.step(step, loss=loss.item(), lr=lr, scale=model.logit_scale.exp().item())
        if recipe.eval_every and (step + 1) % recipe.eval_every == 0 and step + 1 < recipe.steps:
            model.eval()
            m = evaluate_clip(model, tokenizer, n_single=300, n_scenes=300)
            log.event(step, "val", top1=m["zero_shot"]["top1"], i2t_r1=m["retrieval"]["i2t_r1"])
            model.train()
    model.eval()
    metrics = evaluate_clip(model, tokenizer)
    log.event(recipe.steps, "val", top1=metrics["zero_shot"]["top1"], i2t_r1=metrics["retrieval"]["i2t_r1"])
    log.close()
    model.tokenizer = tokenizer
    save_pretrained(model, out)
    return write_training_info(out, recipe, metrics, render_s, t0)


def main(argv: list[str] | None = None) -> None:
    recipe, out, log = recipe_from_argv(ClipTeacherRecipe, "Train the scene-world CLIP teacher from scratch.", argv)
    info = run_trainer_main(train_clip_teacher, recipe, out, log)
    print(json.dumps(info["val"], indent=2), f"\nwall {info['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
