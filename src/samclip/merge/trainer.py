"""SAM-CLIP's three-stage merge as a resumable, data-parallel training run.

Stage I   head probing: backbone frozen, CLIP head trained on L_CLIP.
Stage II  multi-task distillation: every step one D_CLIP batch on L_CLIP and one D_SAM batch on
          lambda * L_SAM, gradients accumulated, one optimizer step; backbone and SAM head at
          ``backbone_lr_mult`` x lr; early stop when forgetting (val prompt mIoU) keeps growing.
Stage III resolution adaptation: backbone frozen, CLIP head on L_CLIP at mixed sizes incl. SAM's.

Data parallel: under ``torchrun`` every rank draws the same global batch (a pure function of
(seed, stage, step)), takes its slice, and gradients are averaged across ranks with one bucketed
all-reduce before each optimizer step (gloo on CPU, nccl on GPU). Checkpoints are written by rank 0
into a temporary folder that is renamed into place; ``resume`` continues from the newest one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..checkpoint import atomic_save_safetensors, atomic_write_bytes, load_safetensors
from ..devices import model_device
from ..losses import cosine_distillation_loss, focal_dice
from ..models import SamClip
from ..precision import autocast
from ..teachers.common import TrainLog, cosine_lr
from .config import MergeConfig, dump_config
from .optim import adamw_groups
from .progress import stage_step_costs
from .regions import RegionSet, build_regions, dense_distillation_loss, region_pooled_loss, token_counts
from .streams import ClipStream, SamStream, step_rng
from .teachers import Teachers
from .token_cache import backbone_tokens

STAGES = (1, 2, 3)


@dataclass
class RunState:
    """Where the run is: the next (stage, step) to execute plus the evaluation history."""

    stage: int = 1
    step: int = 0
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1)


# ---------------------------------------------------------------------------------- distributed
def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist_info()


def allreduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average gradients across ranks in one flat bucket (all ranks hold grads for the same params)."""
    rank, world = dist_info()
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def _barrier() -> None:
    if dist_info()[1] > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------- losses
def to_student_pixels(model: SamClip, images: np.ndarray, size: int) -> torch.Tensor:
    """BxSxSx3 uint8 -> Bx3x(size)x(size) SAM-normalised student input, on the model's device."""
    x = torch.from_numpy(images).to(model_device(model)).permute(0, 3, 1, 2).float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return model.preprocess(x.clamp(0, 255), size)


def clip_distillation_loss(model: SamClip, teachers: Teachers, stream: ClipStream, ids: np.ndarray,
                           size: int, backbone_grad: bool, bf16: bool,
                           cached_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """L_CLIP = mean(1 - cos(student pooled CLIP-head embedding, teacher image embedding)).

    ``cached_tokens`` (NxGxGxD, all stream images at ``size``; frozen backbone only) replaces the
    backbone pass with a lookup."""
    images = stream.images(ids)
    dev = model_device(model)
    target = teachers.clip_embeddings(ids, images).to(dev)
    with autocast(dev, bf16):
        if cached_tokens is not None:
            tokens = cached_tokens[torch.as_tensor(ids, device=cached_tokens.device)].to(dev)
        else:
            with torch.set_grad_enabled(backbone_grad and torch.is_grad_enabled()):
                tokens = model.features(to_student_pixels(model, images, size)).tokens
        student = model.clip_head.pooled(model.clip_head.tokens(tokens))
    return cosine_distillation_loss(student, target)


def sam_distillation_loss(model: SamClip, teachers: Teachers, stream: SamStream, ids: np.ndarray,
                          bf16: bool, iou_weight: float = 1.0) -> torch.Tensor:
    """L_SAM: focal + dice of the student SAM head's logits against the teacher's (soft targets,
    every multimask output) for the same image and prompts, plus MSE on the IoU predictions."""
    images = stream.images(ids)
    prompts = [stream.prompts(int(i)) for i in ids]
    dev = model_device(model)
    t_bl, t_bi, t_pl, t_pi = (t.to(dev) for t in teachers.sam_outputs(ids, images, prompts))
    x = model.preprocess(torch.from_numpy(images).to(dev).permute(0, 3, 1, 2))
    with autocast(dev, bf16):
        emb = model.sam_embeddings(model.features(x))
        boxes = torch.cat([p.boxes for p in prompts]).to(dev)
        s_bl, s_bi = model.decode(emb, boxes=boxes, multimask_output=True)
        pts = torch.cat([p.points for p in prompts]).to(dev)[:, None]
        labels = torch.ones(pts.shape[:2], dtype=torch.long, device=dev)
        s_pl, s_pi = model.decode(emb, pts, labels, multimask_output=True)
    loss = torch.zeros((), device=dev)
    for s_l, s_i, t_l, t_i in ((s_bl, s_bi, t_bl, t_bi), (s_pl, s_pi, t_pl, t_pi)):
        mask_term = focal_dice(s_l.float().flatten(0, 1), torch.sigmoid(t_l).flatten(0, 1)).mean()
        loss = loss + mask_term / 2 + iou_weight * F.mse_loss(s_i.float(), t_i) / 2
    return loss


def _micro_batches(ids: np.ndarray, n: int) -> list[tuple[np.ndarray, float]]:
    """``ids`` in at most ``n`` consecutive chunks, each with its share of the batch: losses that are means over
    their batch, weighted by the shares and back-propagated one chunk at a time, sum to the whole batch's gradient
    (gradient accumulation: the same step in less memory)."""
    return [(chunk, len(chunk) / len(ids)) for chunk in np.array_split(ids, max(1, min(n, len(ids)))) if len(chunk)]


# --------------------------------------------------------------------------------------- trainer
class MergeTrainer:
    def __init__(self, cfg: MergeConfig, model: SamClip, teachers: Teachers, clip_stream: ClipStream,
                 sam_stream: SamStream, evaluator=None) -> None:  # noqa: ANN001
        self.cfg = cfg
        self.model = model
        self.teachers = teachers
        self.clip_stream = clip_stream
        self.sam_stream = sam_stream
        teachers.bind_streams(clip_stream, sam_stream)
        # callable(model, sam=True) -> dict with "zero_shot_top1" (+ "box_miou", "point_miou" when sam)
        self.evaluator = evaluator
        self.out = Path(cfg.out)
        self.rank, self.world = dist_info()
        self.state = RunState()
        self.opt: torch.optim.Optimizer | None = None
        self.log: TrainLog | None = None
        self.token_cache: dict[int, torch.Tensor] = {}  # stages I / III: size -> NxGxGxD frozen tokens
        self.token_cache_images = 0  # how many D_CLIP images the cache holds (0: no cache)
        self.regions: RegionSet | None = None  # region distillation in the stages of cfg.region_stages
        self.region_tokens: dict[int, torch.Tensor] = {}  # stages I / III: size -> D_SAM frozen tokens

    # ---------------------------------------------------------------------------- stage set-up
    def stage_config(self, stage: int):  # noqa: ANN201
        return {1: self.cfg.stage1, 2: self.cfg.stage2, 3: self.cfg.stage3}[stage]

    def _configure(self, stage: int) -> None:
        m = self.model
        if stage == 2:
            m.set_trainable(backbone=True, sam_head=True, clip_head=True)
        else:
            m.set_trainable(backbone=False, sam_head=False, clip_head=True)
        m.backbone.set_grad_checkpointing(self.cfg.grad_checkpointing)
        sc = self.stage_config(stage)
        head = [p for p in m.clip_head.parameters() if p.requires_grad]
        groups = [{"params": head, "lr_mult": 1.0}]
        if stage == 2:
            slow = [p for p in list(m.backbone.parameters()) + list(m.sam.mask_decoder.parameters())]
            groups.append({"params": slow, "lr_mult": self.cfg.backbone_lr_mult})
        self.opt = adamw_groups(m, groups, sc.weight_decay, decay_all=self.cfg.decay_all_parameters)
        self.model.train()
        for frozen in m.frozen_modules():
            frozen.eval()
        t0 = time.perf_counter()
        self.token_cache, self.token_cache_images = {}, self._token_cache_images(stage)
        if self.token_cache_images:
            sizes = self.cfg.data.stage3_sizes if stage == 3 else self.cfg.data.clip_sizes
            self.token_cache = {s: backbone_tokens(m, self.clip_stream, s, self.cfg.use_bf16, progress=self.rank == 0,
                                                   limit=self.token_cache_images, stage=stage)
                                for s in sizes}
        t1 = time.perf_counter()
        self.regions, self.region_tokens = None, {}
        if stage in self.cfg.region_stages and self.cfg.uses_regions:
            d = self.cfg.data
            patch, sizes = m.sam.config.image_encoder.patch_size, self.region_sizes(stage)
            self.regions = build_regions(self.sam_stream, self.teachers, sizes, patch, d.region_min_cover,
                                         d.region_context, crop_pad=d.region_crop_pad,
                                         background_max_cover=d.region_background_max_cover
                                         if d.region_background else None)
            if self.token_cache_images:  # the stage caches D_CLIP tokens: D_SAM's too
                self.region_tokens = {s: backbone_tokens(m, self.sam_stream, s, self.cfg.use_bf16, stage=stage,
                                                         progress=self.rank == 0)
                                      for s in sizes}
        if self.log is not None and self.rank == 0 and sc.steps:  # where a stage's set-up time goes (JSONL log)
            self.log.event(self.global_step(stage, self.state.step), f"setup stage {stage}", token_cache_s=t1 - t0,
                           regions_s=time.perf_counter() - t1)

    def region_sizes(self, stage: int) -> list[int]:
        """The student sizes region distillation runs at in ``stage``: ``data.region_sizes``, else the stage's
        D_CLIP sizes."""
        d = self.cfg.data
        return list(d.region_sizes or (d.stage3_sizes if stage == 3 else d.clip_sizes))

    def step_work(self) -> dict[int, float]:
        """Estimated work of one step of each stage, in stage-I steps (:mod:`samclip.merge.progress`)."""
        m = self.model
        costs = stage_step_costs(self.cfg, m.sam.config.image_encoder, len(m.clip_head.blocks), m.img_size)
        unit = costs[1] or max(costs.values()) or 1.0
        return {s: c / unit for s, c in costs.items()}

    def global_step(self, stage: int, step: int) -> int:
        """``step`` of ``stage`` counted over the whole run (the steps of the earlier stages first)."""
        return sum(self.stage_config(s).steps for s in STAGES if s < stage) + step

    def _token_cache_images(self, stage: int) -> int:
        """How many D_CLIP images the frozen-token cache of ``stage`` holds (0: none; stage II never)."""
        data, n = self.cfg.data, len(self.clip_stream)
        if stage == 1 and data.stage1_token_cache:
            return n
        if stage == 3 and data.stage3_token_cache_images > 0:
            return min(n, data.stage3_token_cache_images)
        return 0

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for g in self.opt.param_groups for p in g["params"]]

    # ------------------------------------------------------------------------------- one step
    def train_step(self, stage: int, step: int) -> dict[str, float]:
        cfg, sc = self.cfg, self.stage_config(stage)
        lr = cosine_lr(step, sc.steps, sc.warmup, sc.lr)
        for g in self.opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        size, cids, sids = self.batch_ids(stage, step)
        if step + 1 < sc.steps:  # real data: the next step's images are read from disk while this one trains
            _, next_cids, next_sids = self.batch_ids(stage, step + 1)
            self.clip_stream.prefetch(next_cids)
            # on a GPU the next step's prompts are sampled on a host thread meanwhile (on a CPU that would only
            # take cores from the step itself)
            self.sam_stream.prefetch(next_sids, prompts=model_device(self.model).type != "cpu")
        self.opt.zero_grad(set_to_none=True)
        l_clip = 0.0
        for chunk, share in _micro_batches(cids, self.clip_micro_batches(len(cids), size)):
            loss = clip_distillation_loss(self.model, self.teachers, self.clip_stream, chunk, size,
                                          backbone_grad=stage == 2, bf16=cfg.use_bf16,
                                          cached_tokens=self.token_cache.get(size))
            (share * loss).backward()
            l_clip += share * loss.item()
        logs = {"l_clip": l_clip, "lr": lr, "size": size}
        if self.regions is not None and (stage != 1 or step >= cfg.region_start):
            terms = self.region_terms(stage, step, size)
            if terms:
                weight = {"l_region": cfg.region_weight, "l_dense": cfg.dense_weight}
                sum(weight[k] * t for k, t in terms.items()).backward()
                logs.update({k: v.item() for k, v in terms.items()})
        if stage == 2:
            l_sam = 0.0
            for chunk, share in _micro_batches(sids, cfg.data.micro_batches):
                loss = sam_distillation_loss(self.model, self.teachers, self.sam_stream, chunk, cfg.use_bf16)
                (cfg.lambda_sam * share * loss).backward()
                l_sam += share * loss.item()
            logs["l_sam"] = l_sam
        params = self.trainable()
        allreduce_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.opt.step()
        return logs

    def clip_micro_batches(self, n_images: int, size: int) -> int:
        """How many sequential chunks a rank's D_CLIP batch of ``n_images`` at ``size`` px runs in:
        ``data.micro_batches``, or more where ``data.micro_batch_tokens`` caps the image tokens of a chunk."""
        data = self.cfg.data
        if data.micro_batch_tokens <= 0:
            return data.micro_batches
        tokens = (size // self.model.sam.config.image_encoder.patch_size) ** 2
        return max(data.micro_batches, math.ceil(n_images * tokens / data.micro_batch_tokens))

    def batch_ids(self, stage: int, step: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(D_CLIP size, this rank's D_CLIP ids, this rank's D_SAM ids (stage II only, else empty)) of a step: a
        pure function of (seed, stage, step), so a resumed run and every rank draw the same batches."""
        cfg = self.cfg
        rng = step_rng(cfg.seed, stage, step, 0)
        sizes = cfg.data.stage3_sizes if stage == 3 else cfg.data.clip_sizes
        size = int(sizes[rng.integers(len(sizes))])
        pool = self.token_cache_images or len(self.clip_stream)  # a stage-III cache holds the first ``pool`` images
        cids = rng.choice(pool, cfg.data.clip_batch, replace=False)[self.rank :: self.world]
        sids = np.zeros(0, np.int64)  # D_SAM batches belong to stage II
        if stage == 2:
            sids = rng.choice(len(self.sam_stream), cfg.data.sam_batch, replace=False)[self.rank :: self.world]
        return size, cids, sids

    def region_terms(self, stage: int, step: int, size: int) -> dict[str, torch.Tensor]:
        """Region distillation on ``data.region_images`` D_SAM images (this rank's slice of a batch that is a
        pure function of (seed, stage, step)) -> {"l_region": masked max-pool term, "l_dense": per-token term}
        (each only when its weight is > 0); empty when the slice has no regions. Each term is normalised by
        the counts of the whole batch (regions; background and mask tokens) times the world size, so that the
        ranks' averaged gradients equal one process's over the same batch."""
        cfg, regions = self.cfg, self.regions
        rng = step_rng(cfg.seed, stage, step, 1)
        n_img = min(cfg.data.region_images, len(self.sam_stream))
        batch = rng.choice(len(self.sam_stream), n_img, replace=False)
        img_ids = batch[self.rank :: self.world]
        if cfg.data.region_sizes:  # its own size draw (stream 2), else the step's D_CLIP size
            sizes = cfg.data.region_sizes
            size = int(sizes[step_rng(cfg.seed, stage, step, 2).integers(len(sizes))])
        per_image = [regions.by_image[i] for i in img_ids]
        if not any(len(r) for r in per_image):
            return {}
        n_regions, n_bg, n_fg = (n / self.world for n in token_counts(regions, size, batch))
        ridx = torch.as_tensor(np.concatenate(per_image))
        region_image = torch.as_tensor(np.repeat(np.arange(len(per_image)), [len(r) for r in per_image]))
        dev = model_device(self.model)
        head = self.model.clip_head
        terms = {}
        with autocast(dev, cfg.use_bf16):
            if size in self.region_tokens:
                tokens = self.region_tokens[size][torch.as_tensor(img_ids)].to(dev)
            else:
                with torch.no_grad():
                    tokens = self.model.features(to_student_pixels(self.model, self.sam_stream.images(img_ids),
                                                                   size)).tokens
            head_tokens = head.tokens(tokens)
            if cfg.region_weight > 0:
                terms["l_region"] = region_pooled_loss(head, head_tokens, regions.select[size][ridx].to(dev),
                                                       region_image.to(dev), regions.targets[ridx].to(dev),
                                                       n_regions)
            if cfg.dense_weight > 0:
                terms["l_dense"] = dense_distillation_loss(
                    head, head_tokens, regions.owner[size][torch.as_tensor(img_ids)].to(dev),
                    regions.targets.to(dev), torch.as_tensor(regions.background, device=dev), (n_bg, n_fg))
        return terms

    # ------------------------------------------------------------------------------------- run
    def run(self, resume: bool = False) -> RunState:
        if resume:
            self._resume()
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.out / "config.toml", dump_config(self.cfg).encode())
        total = sum(self.stage_config(s).steps for s in STAGES)
        work = self.step_work()  # the bar counts estimated work: its ETA holds across stages of unequal steps
        self.log = TrainLog(self.out / "log.jsonl" if self.rank == 0 else None, total=total, desc="merge",
                            work_total=sum(self.stage_config(s).steps * work[s] for s in STAGES))
        self.log.bar.update(sum(self.stage_config(s).steps * work[s] for s in STAGES if s < self.state.stage)
                            + self.state.step * work.get(self.state.stage, 0.0))
        self.tb = _tensorboard(self.out / "tb") if self.rank == 0 else None
        while self.state.stage in STAGES:
            stage = self.state.stage
            sc = self.stage_config(stage)
            if self.opt is None and sc.steps > 0:  # a stage without steps needs no set-up (token caches ...)
                self._configure(stage)
            while self.state.step < sc.steps and not (stage == 2 and self.state.stopped_early):
                step = self.state.step
                logs = self.train_step(stage, step)
                gstep = self.global_step(stage, step)
                self.log.step(gstep, work[stage], stage=stage, **logs)
                if self.tb:
                    for k, v in logs.items():
                        self.tb.add_scalar(f"train/{k}", v, gstep)
                self.state.step += 1
                last = self.state.step == sc.steps
                if self.cfg.eval.every and (self.state.step % self.cfg.eval.every == 0 or last):
                    self._evaluate(stage, gstep + 1)
                if self.state.step % self.cfg.checkpoint_every == 0 or last:
                    self.save_checkpoint()
            self.state.stage += 1
            self.state.step = 0
            self.opt = None
            self.save_checkpoint()
        self.log.close()
        if self.tb:
            self.tb.close()
        self.teachers.save(self.rank)
        return self.state

    def _evaluate(self, stage: int, gstep: int) -> None:
        if self.evaluator is None:
            return
        if self.rank == 0:
            # stages I and III train the CLIP head only: the SAM path is untouched, so its last
            # measured mIoU carries over instead of being re-measured
            last_sam = next((r for r in reversed(self.state.history) if "box_miou" in r), None)
            if stage == 2 or last_sam is None:
                metrics = self.evaluator(self.model)
            else:
                metrics = self.evaluator(self.model, sam=False)
                metrics.update({k: last_sam[k] for k in ("box_miou", "point_miou")})
            row = {"stage": stage, "step": gstep, **metrics}
            self.state.history.append(row)
            self.log.event(gstep, f"eval stage {stage}", **metrics)
            if self.tb:
                for k, v in metrics.items():
                    self.tb.add_scalar(f"val/{k}", v, gstep)
            if stage == 2:
                self.state.stopped_early = self._forgetting_grows()
        self.model.train()
        for frozen in self.model.frozen_modules():
            frozen.eval()
        if self.world > 1:
            flag = torch.tensor([int(self.state.stopped_early)], device=model_device(self.model))
            dist.broadcast(flag, 0)
            self.state.stopped_early = bool(flag.item())

    def _forgetting_grows(self) -> bool:
        """True when stage-II val box mIoU dropped by more than the tolerance ``patience`` evals in a row."""
        ev = self.cfg.eval
        rows = [r for r in self.state.history if r["stage"] == 2 and "box_miou" in r]
        if len(rows) <= ev.early_stop_patience:
            return False
        recent = [r["box_miou"] for r in rows[-(ev.early_stop_patience + 1) :]]
        return all(b < a - ev.early_stop_tolerance for a, b in zip(recent[:-1], recent[1:]))

    # ------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes ``checkpoints/s<stage>-<step>`` via a temp folder + rename; keeps the last 2. Every rank
        writes the teacher outputs it cached since its last checkpoint."""
        self.teachers.save(self.rank)
        _barrier()
        if self.rank != 0:
            _barrier()
            return None
        root = self.out / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        name = f"s{self.state.stage}-{self.state.step:07d}"
        tmp = root / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        atomic_save_safetensors(self.model.state_dict(), tmp / "model.safetensors")
        if self.opt is not None:
            torch.save(self.opt.state_dict(), tmp / "optimizer.pt")
        atomic_write_bytes(tmp / "state.json", self.state.to_json().encode())
        final = root / name
        _remove_hidden_first(final)
        os.replace(tmp, final)
        atomic_write_bytes(root / "latest", name.encode())
        for old in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))[:-2]:
            _remove_hidden_first(old)
        _barrier()
        return final

    def _resume(self) -> None:
        root = self.out / "checkpoints"
        latest = root / "latest"
        if not latest.exists():
            return
        if self.rank == 0:  # leftovers of a killed run: half-written or half-deleted, never visible
            for hidden in root.glob(".*"):
                if hidden.is_dir():
                    shutil.rmtree(hidden, ignore_errors=True)
        name = latest.read_text().strip()
        if not name:
            raise ValueError(f"--resume: {latest} is empty (it names the checkpoint to resume from); delete it to "
                             "start over")
        ckpt = root / name
        try:
            # copies onto the model's device
            self.model.load_state_dict(load_safetensors(ckpt / "model.safetensors"))
        except RuntimeError as err:  # another architecture: the first lines of torch's key / shape report
            detail = " ".join(str(err).split())[:300]
            raise ValueError(f"--resume: {ckpt} does not fit this config's model (was it written with other "
                             f"teachers or head settings?): {detail}") from None
        try:
            self.state = RunState(**json.loads((ckpt / "state.json").read_text()))
        except (ValueError, TypeError) as err:
            raise ValueError(f"--resume: {ckpt / 'state.json'} is not a run state this version wrote ({err})") from None
        if self.state.stage in STAGES:
            self._configure(self.state.stage)
            opt_path = ckpt / "optimizer.pt"
            if opt_path.exists() and self.state.step > 0:
                try:
                    opt_state = torch.load(opt_path, map_location=model_device(self.model), weights_only=True)
                    self.opt.load_state_dict(opt_state)
                except Exception as err:  # noqa: BLE001 - unpickling raises anything on a corrupt file
                    raise ValueError(f"--resume: {opt_path} is not an optimizer state this run can load "
                                     f"({type(err).__name__}: {err})") from None


def _remove_hidden_first(folder: Path) -> None:
    """Delete a checkpoint folder so that a kill at any moment never leaves a visible, half-deleted one:
    it is first renamed (atomically) to a hidden name, then removed."""
    if not folder.exists():
        return
    trash = folder.with_name(f".del-{folder.name}-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _tensorboard(path: Path):  # noqa: ANN202
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(path))
