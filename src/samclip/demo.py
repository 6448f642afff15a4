"""``samclip demo`` (``make demo``): the embedded-default merge end to end, then the report.

1. merges the shipped scene-world teachers with ``configs/tiny-synthetic.toml`` (resuming if a
   previous demo run in the same folder was interrupted);
2. evaluates the merged model and both teachers on fresh seeds;
3. writes ``report.json``, ``report.md`` and ``curves.png`` and prints where they are.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .checkpoint import atomic_write_bytes
from .errors import UserError
from .eval.merge_report import evaluate_merge, write_json
from .factory import load_clip, load_model, load_sam
from .merge.config import CONFIG_DIR, load_config
from .merge.run import run_merge

QUICK = [
    "stage1.steps=3", "stage2.steps=3", "stage3.steps=2", "eval.every=0", "data.clip_images=128",
    "data.sam_images=16", "checkpoint_every=5",
]


def _markdown(report: dict, merge_wall: float, curves: Path | None) -> str:
    ct, st, m, d = report["clip_teacher"], report["sam_teacher"], report["merged"], report["deltas"]
    zs = {k: v for k, v in m.items() if k.startswith("zero_shot_top1@")}
    lines = [
        "# samclip demo: embedded-default merge",
        "",
        f"Merge wall time: {merge_wall / 60:.1f} min. All numbers on the scene world's `test` split "
        "(seeds training never used).",
        "",
        "| metric | teacher | merged | merged - teacher |",
        "| --- | --- | --- | --- |",
    ]
    for k, v in zs.items():
        size = int(k.split("@")[1])
        mark = " (its `clip_size`, chosen on val)" if size == m.get("clip_size") else ""
        lines.append(f"| zero-shot shape top-1, CLIP head at {size} px{mark} | {ct['zero_shot_top1']:.1f} "
                     f"(CLIP teacher, {ct['size']} px) | {v:.1f} | {v - ct['zero_shot_top1']:+.1f} |")
    if len(m.get("tta_views", [])) > 1:
        views = ", ".join(f"{v[0]} px{' mirrored' if v[1] else ''}" for v in m["tta_views"])
        lines.append(f"| zero-shot shape top-1, the model's classification (mean of {views}) | "
                     f"{ct['zero_shot_top1_flip_tta']:.1f} (CLIP teacher, image + mirror) | "
                     f"{m['zero_shot_top1']:.1f} | "
                     f"{d['zero_shot_top1']:+.1f} (vs the better teacher number) |")
    lines.append(f"| box-prompt mIoU | {st['box_miou']:.1f} | {m['box_miou']:.1f} | {d['box_miou']:+.1f} |")
    lines.append(f"| point-prompt mIoU (best of 3) | {st['point_miou']:.1f} | {m['point_miou']:.1f} | "
                 f"{d['point_miou']:+.1f} |")
    lines += ["", "Acceptance margins: zero-shot >= teacher - 2, box/point mIoU >= teacher - 1.5.", ""]
    if curves is not None:
        lines += ["![learning and forgetting curves](curves.png)", ""]
    return "\n".join(lines)


def run_demo(out: Path, quick: bool = False, fresh: bool = False) -> int:
    t0 = time.time()
    try:
        sam_t, clip_t = load_sam("tiny-synthetic"), load_clip("tiny-synthetic")
    except FileNotFoundError as e:
        raise UserError(f"{e}. Train them with `make teachers`.") from None
    merge_dir = out / "merge"
    if fresh and merge_dir.exists():
        shutil.rmtree(merge_dir)
    overrides = [f"out={merge_dir}"] + (QUICK if quick else [])
    cfg = load_config(CONFIG_DIR / "tiny-synthetic.toml", overrides)
    resuming = (merge_dir / "checkpoints" / "latest").exists()
    print(f"[1/3] merging the scene-world teachers -> {merge_dir}" + (" (resuming)" if resuming else ""))
    summary = run_merge(cfg, resume=True)
    merge_wall = time.time() - t0
    print(f"[2/3] evaluating merged model and teachers on fresh seeds (merge took {merge_wall / 60:.1f} min)")
    merged = load_model(merge_dir / "model")
    n = dict(n_single=120, n_scenes=20) if quick else {}
    report = evaluate_merge(merged, sam_t, clip_t, **n)
    report["merge"] = {"wall_s": merge_wall, "stopped_early": summary["stopped_early"], "config": str(cfg.out)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(report, out / "report.json")
    curves = merge_dir / "curves.png"
    if curves.exists():
        shutil.copyfile(curves, out / "curves.png")
    atomic_write_bytes(out / "report.md",
                       _markdown(report, merge_wall, curves if curves.exists() else None).encode())
    print(f"[3/3] report: {out / 'report.md'} and {out / 'report.json'}; merged model: {merge_dir / 'model'}")
    return 0
