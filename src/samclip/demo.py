"""``samclip demo`` (``make demo``): the embedded-default merge end to end, then the report.

1. merges the shipped scene-world teachers with ``configs/tiny-synthetic.toml`` (resuming if a
   previous demo run in the same folder was interrupted);
2. evaluates the merged model and both teachers on fresh seeds: the merge's acceptance table (merged vs
   teachers), then the scene world's whole evaluation (``samclip eval``'s: zero-shot semantic segmentation
   against baselines (a)-(f), click / box labelling, text -> instances, overlays);
3. writes ``report.json``, ``report.md``, ``curves.png`` and ``overlays.png`` and prints where they are.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .checkpoint import atomic_write_bytes
from .errors import UserError
from .eval.harness import report_sections, scenes_benchmark
from .eval.merge_report import teacher_table, write_json
from .factory import load_clip, load_model, load_sam
from .merge.config import CONFIG_DIR, load_config
from .merge.run import run_merge

QUICK = [
    "stage1.steps=3", "stage2.steps=3", "stage3.steps=2", "eval.every=0", "data.clip_images=128",
    "data.sam_images=16", "checkpoint_every=5",
]


def _markdown(report: dict, merge_wall: float, curves: Path | None, resumed: bool = False) -> str:
    resumed_note = " (this run resumed an earlier one: the time before the resume is not included)" if resumed else ""
    lines = [
        "# samclip demo: embedded-default merge",
        "",
        f"Merge wall time: {merge_wall / 60:.1f} min{resumed_note}. All numbers on the scene world's `test` split "
        "(seeds training never used).",
        "",
        "## The merge: merged model vs teachers",
        "",
        *teacher_table(report),
        "",
    ]
    if curves is not None:
        lines += ["![learning and forgetting curves](curves.png)", ""]
    # then the whole evaluation, as `samclip eval` reports it, without its copy of the table above
    return "\n".join(lines + report_sections(report, teachers=False))


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
    report = scenes_benchmark(merged, sam_t, clip_t, out, quick=quick)  # writes out/overlays.png
    report["merge"] = {"wall_s": merge_wall, "resumed": resuming, "stopped_early": summary["stopped_early"],
                       "config": str(cfg.out)}
    write_json(report, out / "report.json")
    curves = merge_dir / "curves.png"
    if curves.exists():
        shutil.copyfile(curves, out / "curves.png")
    atomic_write_bytes(out / "report.md",
                       _markdown(report, merge_wall, curves if curves.exists() else None, resuming).encode())
    print(f"[3/3] report: {out / 'report.md'} and {out / 'report.json'}; merged model: {merge_dir / 'model'}")
    return 0
