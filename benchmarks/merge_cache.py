"""A stage-II merge step with the teacher-output cache vs with online teachers, in one run.

Same config, same steps, same data: first the online pass (teachers run every step), then the cache
is filled for those steps' images and the same steps run again reading teacher outputs from it.
Prints seconds per step for both and the ratio online / cached (target >= 2x).

    .venv/bin/python benchmarks/merge_cache.py [--steps 6] [--config tiny-synthetic] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time

import torch

from samclip.merge.config import CONFIG_DIR, load_config
from samclip.merge.run import build_streams, build_student
from samclip.merge.trainer import MergeTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(CONFIG_DIR / "tiny-synthetic.toml"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="merge_cache_bench_")
    cfg = load_config(args.config, [f"out={out}", "data.clip_images=1024", "data.sam_images=64",
                                    "eval.every=0", *args.set])
    model, teachers = build_student(cfg)
    clip_stream, sam_stream = build_streams(cfg, model.img_size, progress=False)
    trainer = MergeTrainer(cfg, model, teachers, clip_stream, sam_stream)
    start_state = copy.deepcopy(model.state_dict())

    def run(cache: bool) -> list[float]:
        model.load_state_dict(start_state)
        teachers.use_cache = cache
        trainer._configure(2)
        times = []
        for step in range(args.steps):
            t0 = time.perf_counter()
            trainer.train_step(2, step)
            times.append(time.perf_counter() - t0)
        return times

    teachers.clip_cache.clear()
    teachers.sam_cache.clear()
    online = run(cache=False)
    run(cache=True)  # fills the cache for exactly these steps' images (this pass also runs the teachers)
    cached = run(cache=True)
    res = {
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "clip_batch": cfg.data.clip_batch,
        "sam_batch": cfg.data.sam_batch,
        "online_s_per_step": statistics.median(online),
        "cached_s_per_step": statistics.median(cached),
    }
    res["speedup_cached_vs_online"] = res["online_s_per_step"] / res["cached_s_per_step"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}, indent=2))


if __name__ == "__main__":
    main()
