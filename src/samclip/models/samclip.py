"""The merged SAM-CLIP model: one backbone, a SAM head and a CLIP head.

Parts (SAM-CLIP, Wang et al. 2023): backbone = SAM's image encoder; SAM head = SAM's mask decoder
(prompt encoder frozen); CLIP head = transformer blocks + max-pool + LayerNorm + MLP into the CLIP
text space; the CLIP teacher's text tower (frozen) and temperature for zero-shot use.

It exposes SAM's interface (``preprocess``, ``image_embeddings``, ``decode``, ``postprocess_masks``)
so every SAM tool works on it, and :meth:`features` / :meth:`heads` to serve both heads from ONE
backbone pass. Images use SAM's pixel normalisation for every task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .clip import CLIP, TextTransformer
from .clip_head import ClipHead, ClipHeadConfig
from .configs import SamConfig, TextTowerConfig, _Config, register_nested
from .mask_decoder import FirstLayerImage
from .sam import Sam


@dataclass(frozen=True)
class SamClipConfig(_Config):
    """The merged model. ``clip_size`` / ``semseg_size`` / ``label_size``: default input sizes (pixels per
    side) for classification, CLIP-head semantic segmentation and one-pass mask labelling (max / region
    pooling; 0: ``clip_size``); SAM tasks use the SAM native size."""

    sam: SamConfig = field(default_factory=SamConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    head: ClipHeadConfig = field(default_factory=ClipHeadConfig)
    init_logit_scale: float = 4.6052
    clip_size: int = 224
    semseg_size: int = 448
    label_size: int = 0
    # test-time augmentation of classification (the pooled embedding): the L2-normalised embeddings of the
    # image at clip_size and at each of tta_sizes, each also mirrored left-right when tta_flip, are averaged
    # (see :meth:`classify_views`). Off by default; the merge turns it on when it is better on validation
    tta_sizes: tuple[int, ...] = ()
    tta_flip: bool = False
    # the prompt templates of this model's zero-shot ensembles ("{}" = the class name), e.g. a photo ensemble for
    # a model merged from web-scale CLIP; empty: samclip.data.class_prompt_templates (the scene world's, which
    # the embedded default was made with)
    templates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        patch = self.sam.image_encoder.patch_size
        for s in (self.clip_size, self.semseg_size, *self.tta_sizes, self.label_size or self.clip_size):
            if int(s) != s or s < patch or s % patch:
                raise ValueError(f"input sizes must be positive multiples of the patch size {patch}, got {s}")
        for t in self.templates:
            if not isinstance(t, str) or t.count("{}") != 1:
                raise ValueError(f"every template must be a string with one '{{}}' for the class name, got {t!r}")

    def classify_views(self, size: int | None = None) -> tuple[tuple[int, bool], ...]:
        """The (input size, mirrored) views whose embeddings classification averages: ``size`` (default
        ``clip_size``) then each of ``tta_sizes``, each unmirrored then mirrored when ``tta_flip``."""
        sizes = dict.fromkeys((size or self.clip_size, *self.tta_sizes))
        flips = (False, True) if self.tta_flip else (False,)
        return tuple((s, f) for s in sizes for f in flips)

    @property
    def has_tta(self) -> bool:
        return len(self.classify_views()) > 1


register_nested("SamClipConfig", "sam", SamConfig)
register_nested("SamClipConfig", "text", TextTowerConfig)
register_nested("SamClipConfig", "head", ClipHeadConfig)


@dataclass
class Features:
    """One backbone pass: ``tokens`` BxGxGxD (backbone output) and the input frame size S."""

    tokens: torch.Tensor
    frame: int


class SamClip(nn.Module):
    def __init__(self, config: SamClipConfig, sam: Sam, clip_head: ClipHead, text: TextTransformer) -> None:
        super().__init__()
        self.config = config
        self.sam = sam
        self.clip_head = clip_head
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.tokenizer = None

    @classmethod
    def from_config(cls, config: SamClipConfig) -> SamClip:
        sam = Sam.from_config(config.sam)
        head = ClipHead(config.head, config.sam.image_encoder)
        return cls(config, sam, head, TextTransformer(config.text, config.head.out_dim))

    @classmethod
    def from_teachers(cls, sam: Sam, clip: CLIP, head: ClipHeadConfig | None = None, *,
                      clip_size: int | None = None, semseg_size: int | None = None) -> SamClip:
        """SAM-CLIP initialisation: backbone + SAM head from ``sam``; CLIP-head blocks copied from the
        backbone's last block (MLP random); text tower, temperature and tokenizer from ``clip``."""
        head = head or ClipHeadConfig(out_dim=clip.config.embed_dim)
        if head.out_dim != clip.config.embed_dim:
            raise ValueError(f"head.out_dim {head.out_dim} != CLIP embed_dim {clip.config.embed_dim}")
        native = sam.config.image_encoder.img_size
        cfg = SamClipConfig(
            sam=sam.config, text=clip.config.text, head=head,
            init_logit_scale=float(clip.logit_scale.detach()),
            clip_size=clip_size or native, semseg_size=semseg_size or native,
        )
        model = cls.from_config(cfg)
        model.sam.load_state_dict(sam.state_dict())
        model.clip_head.init_blocks_from(sam.image_encoder.blocks[-1])
        model.text.load_state_dict(clip.text.state_dict())
        model.tokenizer = getattr(clip, "tokenizer", None)
        return model

    # ------------------------------------------------------------------ SAM interface (delegation)
    @property
    def backbone(self) -> nn.Module:
        return self.sam.image_encoder

    @property
    def img_size(self) -> int:
        return self.sam.img_size

    @property
    def mask_threshold(self) -> float:
        return self.sam.mask_threshold

    def preprocess(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        return self.sam.preprocess(images, size)

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.sam.image_embeddings(pixel_values)

    def decode(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN002, ANN003
        return self.sam.decode(*args, **kwargs)

    def decoder_image_cache(self, image_embeddings: torch.Tensor) -> FirstLayerImage:
        return self.sam.decoder_image_cache(image_embeddings)

    def postprocess_masks(self, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        return self.sam.postprocess_masks(*args, **kwargs)

    # ------------------------------------------------------------------------- one pass, both heads
    def features(self, pixel_values: torch.Tensor) -> Features:
        """Bx3xSxS normalised, padded images -> backbone tokens (the one expensive pass)."""
        return Features(self.backbone.forward_features(pixel_values), pixel_values.shape[-1])

    def sam_embeddings(self, feats: Features) -> torch.Tensor:
        """Backbone tokens -> SAM-head image embeddings BxCxGxG (the neck)."""
        return self.backbone.forward_neck(feats.tokens)

    def clip_tokens(self, feats: Features) -> torch.Tensor:
        return self.clip_head.tokens(feats.tokens)

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Bx3xSxS -> BxE pooled CLIP-head embedding."""
        out = self.clip_head.pooled(self.clip_tokens(self.features(pixel_values)))
        return F.normalize(out, dim=-1) if normalize else out

    def patch_embeddings(self, feats: Features, normalize: bool = True) -> torch.Tensor:
        """Per-patch CLIP-space embeddings BxGxGxE (semantic segmentation, mask pooling)."""
        out = self.clip_head.per_patch(self.clip_tokens(feats))
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = self.text(tokens)
        return F.normalize(out, dim=-1) if normalize else out

    # --------------------------------------------------------------------------- training helpers
    def frozen_modules(self) -> list[nn.Module]:
        """Modules that are never trained: SAM's prompt encoder and the CLIP text tower."""
        return [self.sam.prompt_encoder, self.text]

    def set_trainable(self, *, backbone: bool, sam_head: bool, clip_head: bool) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        for module, flag in ((self.backbone, backbone), (self.sam.mask_decoder, sam_head),
                             (self.clip_head, clip_head)):
            for p in module.parameters():
                p.requires_grad_(flag)
