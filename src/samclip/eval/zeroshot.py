"""Zero-shot classification and retrieval metrics, model-agnostic.

Models enter as two callables so the same code measures the CLIP teacher and the merged model:
``encode_images(uint8 BxHxWx3) -> BxE`` and ``encode_texts(list[str]) -> TxE`` (both L2-normalised).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data import SHAPES, class_prompts, single_object_scene, split_seeds

ImageEncoder = Callable[[np.ndarray], torch.Tensor]
TextEncoder = Callable[[list[str]], torch.Tensor]


@torch.no_grad()
def class_embeddings(encode_texts: TextEncoder, labels: Sequence[str],
                     prompts: Callable[[str], list[str]] = class_prompts) -> torch.Tensor:
    """Prompt-ensemble class embeddings: mean of the normalised template embeddings -> CxE (normalised)."""
    rows = []
    for label in labels:
        emb = F.normalize(encode_texts(prompts(label)).float(), dim=-1)
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


def with_flip_tta(encode_images: ImageEncoder) -> ImageEncoder:
    """Test-time augmentation: each NxHxWx3 image embedded as the normalised mean of its normalised embedding
    and its left-right mirror's."""
    def enc(images: np.ndarray) -> torch.Tensor:
        plain = F.normalize(encode_images(images).float(), dim=-1)
        mirrored = F.normalize(encode_images(np.ascontiguousarray(images[:, :, ::-1])).float(), dim=-1)
        return F.normalize(plain + mirrored, dim=-1)

    return enc


@torch.no_grad()
def zero_shot_accuracy(encode_images: ImageEncoder, encode_texts: TextEncoder, images: np.ndarray,
                       labels: np.ndarray, classes: Sequence[str] = SHAPES, batch: int = 256) -> dict:
    """Top-1 / top-3 accuracy (percent) of NxHxWx3 images with integer labels (index into ``classes``)."""
    cls = class_embeddings(encode_texts, classes)
    preds = []
    for i in range(0, len(images), batch):
        emb = F.normalize(encode_images(images[i : i + batch]).float(), dim=-1)
        preds.append((emb @ cls.T).topk(3, dim=-1).indices)
    top = torch.cat(preds)
    y = torch.as_tensor(labels)[:, None]
    return {"top1": 100 * (top[:, :1] == y).any(1).float().mean().item(),
            "top3": 100 * (top == y).any(1).float().mean().item(), "n": len(images)}


@torch.no_grad()
def retrieval_recall(encode_images: ImageEncoder, encode_texts: TextEncoder, images: np.ndarray,
                     captions: list[str], batch: int = 256) -> dict:
    """Image->caption and caption->image recall@1/@5 (percent) over paired NxHxWx3 images and captions."""
    img = torch.cat([F.normalize(encode_images(images[i : i + batch]).float(), dim=-1)
                     for i in range(0, len(images), batch)])
    txt = torch.cat([F.normalize(encode_texts(captions[i : i + batch]).float(), dim=-1)
                     for i in range(0, len(captions), batch)])
    sim = img @ txt.T
    gt = torch.arange(len(images))[:, None]
    i2t = sim.topk(5, dim=1).indices
    t2i = sim.T.topk(5, dim=1).indices
    return {"i2t_r1": 100 * (i2t[:, :1] == gt).any(1).float().mean().item(),
            "i2t_r5": 100 * (i2t == gt).any(1).float().mean().item(),
            "t2i_r1": 100 * (t2i[:, :1] == gt).any(1).float().mean().item(),
            "t2i_r5": 100 * (t2i == gt).any(1).float().mean().item(), "n": len(images)}


def single_object_eval_set(split: str, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """n single-object scenes of ``split`` -> (NxSxSx3 uint8, N labels indexing ``SHAPES``)."""
    imgs, labels = [], []
    for seed in split_seeds(split, n):
        s = single_object_scene(seed, size)
        imgs.append(s.image)
        labels.append(SHAPES.index(s.objects[0].category))
    return np.stack(imgs), np.asarray(labels)
