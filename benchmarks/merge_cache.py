"""A stage-II merge step with the teacher-output cache vs with online teachers, in one run.

Same config, same steps, same data: first an untimed pass fills the cache for those steps' images (and
warms up), then the online pass (teachers run every step) and the same steps reading teacher outputs
from the cache are timed.
Prints seconds per step for both and the ratio online / cached (target >= 2x), and the same steps with only
the CLIP side cached (``data.cache_sam_teacher = false``, what the paper config does: SA-1B's SAM logits would
not fit anywhere). ``--flops`` also counts each kind of step's floating-point operations (one step each, the
first): their ratio is the ceiling of the measured one where time follows the multiply-adds.

    .venv/bin/python benchmarks/merge_cache.py [--steps 6] [--config tiny-synthetic] [--set k=v ...]
    .venv/bin/python benchmarks/merge_cache.py --preset paper --steps 1

``--preset paper``: random teachers in the paper's architectures (SAM ViT-B at 1024 px, CLIP ViT-L/14 at
224 px) and its config (``sam-vit-b_clip-vit-l14``: gradient checkpointing, 3072-wide head MLP), on scene-world
images, with the paper's 64:1 ratio of CLIP to SAM images per step at a CPU-sized batch (64 CLIP images at
224 px + 1 SAM image with 32 prompts; the paper: 2048 + 32): what the teacher cache saves at real scale,
where the teachers are bigger than the student (several minutes per step on a small CPU).

On a GPU (the config's ``device = "auto"`` takes it) each step ends with a device synchronisation and the peak
GPU memory is reported; per-GPU batches of the paper's run on 8 GPUs (256 CLIP images + 4 SAM images):

    python benchmarks/merge_cache.py --preset paper --steps 3 --set data.clip_batch=256 --set data.sam_batch=4 \
        --set data.clip_images=1024 --set data.sam_images=16
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import samclip
from _flops import count_flops
from _timing import synchronize
from samclip.allocator import tune_malloc
from samclip.devices import model_device
from samclip.merge.config import CONFIG_DIR, load_config
from samclip.merge.run import build_streams, build_student
from samclip.merge.trainer import MergeTrainer
from samclip.precision import describe_machine
from samclip.testing import random_clip


def paper_teachers(root: Path) -> list[str]:
    """Random SAM ViT-B and CLIP ViT-L/14 teachers saved under ``root``; config overrides that use them on
    scene-world data at the paper's per-step image ratio."""
    torch.manual_seed(0)
    samclip.save_pretrained(samclip.create_sam("sam-vit-b"), root / "sam")
    samclip.save_pretrained(random_clip("clip-vit-l-14"), root / "clip")
    return [f"teachers.sam={root / 'sam'}", f"teachers.clip={root / 'clip'}", "teachers.clip_format_config=",
            "data.source=scenes", "data.clip_images=128", "data.sam_images=4", "data.clip_render_size=224",
            "data.clip_sizes=224", "data.clip_batch=64", "data.sam_batch=1", "data.prompts_per_image=32"]


def main() -> None:
    tune_malloc()  # both sides of every comparison run with the same allocator (samclip.allocator)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(CONFIG_DIR / "tiny-synthetic.toml"))
    ap.add_argument("--steps", type=int, default=6, help="timed steps per kind (0 with --flops: count only)")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after the timing, one cached step under torch.profiler: print its N most expensive ops "
                         "by self CPU time (and first by self device time on a GPU)")
    ap.add_argument("--flops", action="store_true",
                    help="also count the floating-point operations of one online, one cached and one CLIP-cached "
                         "step (their ratio: the most the cache can save when time follows the multiply-adds)")
    ap.add_argument("--preset", choices=["paper"], default=None,
                    help="random teachers in the paper's architectures and its config (ignores --config)")
    args = ap.parse_args()
    if args.steps < 0 or (args.steps == 0 and not args.flops):
        ap.error("--steps must be >= 1 (0 only with --flops: count, do not time)")
    out = tempfile.mkdtemp(prefix="merge_cache_bench_")
    sizes = ["data.clip_images=1024", "data.sam_images=64"]
    if args.preset == "paper":
        args.config, sizes = str(CONFIG_DIR / "sam-vit-b_clip-vit-l14.toml"), paper_teachers(Path(out) / "teachers")
    cfg = load_config(args.config, [f"out={out}", *sizes, "eval.every=0", *args.set])
    model, teachers = build_student(cfg)
    clip_stream, sam_stream = build_streams(cfg, model.img_size, progress=False)
    trainer = MergeTrainer(cfg, model, teachers, clip_stream, sam_stream)
    start_state = copy.deepcopy(model.state_dict())
    dev = model_device(model)

    def run(cache: bool, sam: bool = True, steps: int = args.steps) -> list[float]:
        model.load_state_dict(start_state)
        teachers.use_cache, teachers.cache_sam = cache, sam
        trainer._configure(2)
        times = []
        for step in range(steps):
            synchronize(dev)
            t0 = time.perf_counter()
            trainer.train_step(2, step)
            synchronize(dev)
            times.append(time.perf_counter() - t0)
        return times

    def flops(cache: bool, sam: bool = True) -> int:
        model.load_state_dict(start_state)
        teachers.use_cache, teachers.cache_sam = cache, sam
        trainer._configure(2)
        return count_flops(lambda: trainer.train_step(2, 0))

    teachers.clip_cache.clear()
    teachers.sam_cache.clear()
    teachers.cache_sam = True  # filled for the fully cached pass even where the config caches only the CLIP side
    # first (untimed, and the warm-up of both timed passes): fill the cache for exactly these steps' images,
    # running the teachers as the online pass does
    run(cache=True, steps=max(args.steps, 1))
    res = {
        "machine": describe_machine(dev),
        "bf16": cfg.use_bf16,
        "grad_checkpointing": cfg.grad_checkpointing,
        "steps": args.steps,
        "clip_batch": cfg.data.clip_batch,
        "sam_batch": cfg.data.sam_batch,
    }
    if args.steps:
        online = run(cache=False)  # the teachers run every step (the cache is not read)
        cached = run(cache=True)
        clip_only = run(cache=True, sam=False)  # the SAM teacher runs every step, the CLIP side from the cache
        res["online_s_per_step"] = statistics.median(online)
        res["cached_s_per_step"] = statistics.median(cached)
        res["clip_cached_s_per_step"] = statistics.median(clip_only)
        res["speedup_cached_vs_online"] = res["online_s_per_step"] / res["cached_s_per_step"]
        res["speedup_clip_cached_vs_online"] = res["online_s_per_step"] / res["clip_cached_s_per_step"]
    if args.flops:
        counts = {"online": flops(cache=False), "cached": flops(cache=True),
                  "clip_cached": flops(cache=True, sam=False)}
        res.update({f"gflops_{k}": v / 1e9 for k, v in counts.items()})
        res["flop_ratio_cached_vs_online"] = counts["online"] / counts["cached"]
        res["flop_ratio_clip_cached_vs_online"] = counts["online"] / counts["clip_cached"]
    if dev.type == "cuda":
        res["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}, indent=2))
    if args.profile:
        profile_step(trainer, dev, args.profile)


def profile_step(trainer: MergeTrainer, dev: torch.device, rows: int) -> None:
    """One stage-II step (teacher outputs from the cache) under torch.profiler: the ``rows`` most expensive ops,
    to see where a step's time goes beyond its multiply-adds (launches, copies, host-side work)."""
    from torch.profiler import ProfilerActivity, profile

    trainer.teachers.use_cache, trainer.teachers.cache_sam = True, True
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        trainer.train_step(2, 0)
        synchronize(dev)
    table = prof.key_averages()
    if dev.type == "cuda":  # where the GPU is busy, then what keeps the host busy while it waits
        print(table.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=60))
    print(table.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
