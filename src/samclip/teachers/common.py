"""Training utilities shared by the teacher trainers: learning-rate schedule and a progress log."""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any


def cosine_lr(step: int, total: int, warmup: int, base: float, final_frac: float = 0.02) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine decay to ``final_frac * base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class TrainLog:
    """A tqdm progress bar (ETA, smoothed losses, steps/s) plus an optional JSONL log file.

    With ``work_total`` the bar counts work instead of steps (each :meth:`step` adds its ``work``), so that
    its ETA holds when steps differ in cost (the merge's stages); it then shows the step count and the
    throughput of the latest steps (seconds per step) in its postfix, and the percentage and times, not
    the work units."""

    def __init__(self, path: Path | None, total: int, desc: str, every: int = 10,
                 work_total: float | None = None) -> None:
        from tqdm import tqdm

        if work_total is None:
            self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, mininterval=2.0)
        else:
            self.bar = tqdm(total=work_total, desc=desc, dynamic_ncols=True, mininterval=2.0,
                            bar_format="{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]")
        self.total, self.weighted = total, work_total is not None
        self.path = path
        self.file = open(path, "a") if path else None  # noqa: SIM115
        self.every = every
        self.smooth: dict[str, float] = {}
        self.t0 = time.time()
        self._last: tuple[int, float] | None = None  # (steps done, time) at the latest postfix update

    def step(self, step: int, work: float = 1.0, **values: float) -> None:
        """Log ``step`` (counted from 0 over the whole run) with its ``values``; ``work``: what it adds to a
        ``work_total`` bar (a plain bar adds 1)."""
        for k, v in values.items():  # losses are smoothed; integers (stage, size) and the lr shown as they are
            keep = isinstance(v, int) or k == "lr" or k not in self.smooth
            self.smooth[k] = v if keep else 0.9 * self.smooth[k] + 0.1 * v
        self.bar.update(work if self.weighted else 1)
        if step % self.every == 0:
            shown = {k: f"{v:.3g}" for k, v in self.smooth.items()}
            if self.weighted:
                now, last = time.time(), self._last
                self._last = (step + 1, now)
                rate = f"{(now - last[1]) / (step + 1 - last[0]):.2f}s/step" if last and step + 1 > last[0] else "-"
                shown = {"step": f"{step + 1}/{self.total}", "speed": rate, **shown}
            self.bar.set_postfix(shown, refresh=False)
            self._write({"step": step, "time": time.time() - self.t0, **values})

    def event(self, step: int, name: str, **values: float) -> None:
        self.bar.write(f"[{name} @ {step}] " + " ".join(f"{k}={v:.4g}" for k, v in values.items()))
        self._write({"step": step, "event": name, "time": time.time() - self.t0, **values})

    def _write(self, row: dict) -> None:
        if self.file:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()


def parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


#: the recipes' numeric fields and their ranges (low, high; None: unbounded); any other number must be >= 0
RECIPE_RANGES: dict[str, tuple[float, float | None]] = {
    "train_images": (1, None), "val_images": (1, None), "steps": (1, None), "batch_images": (1, None),
    "prompts_per_image": (1, None), "scene_images": (1, None), "single_images": (1, None), "batch": (2, None),
    "vocab_size": (260, None), "box_fraction": (0, 1), "shape_only_single": (0, 1), "shape_only_scene": (0, 1),
}


def check_recipe(recipe: Any) -> None:
    """ValueError naming the first recipe field out of range (a zero batch trains on nothing and saves NaN
    weights; negative steps save an untrained model), before any rendering or training."""
    for name, value in asdict(recipe).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        low, high = RECIPE_RANGES.get(name, (0, None))
        if not (math.isfinite(value) and value >= low and (high is None or value <= high)):
            want = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"--{name.replace('_', '-')} {value}: must be {want}")
    if getattr(recipe, "lr", 1.0) <= 0:
        raise ValueError(f"--lr {recipe.lr}: must be > 0")
    if getattr(recipe, "bf16", "auto") not in ("auto", "true", "false"):
        raise ValueError(f"--bf16 {recipe.bf16!r}: expected auto, true or false")


def recipe_from_argv(recipe_cls: type, description: str, argv: list[str] | None) -> tuple[Any, Path, Path | None]:
    """``--out``, ``--log`` and one ``--field`` flag per recipe dataclass field -> (recipe, out, log); a value out
    of range, or an ``--out`` that is a file, is an argparse error (one line, exit 2) before any work."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--log", type=Path, default=None, help="JSONL log file")
    defaults = asdict(recipe_cls())
    for f, v in defaults.items():
        ap.add_argument(f"--{f.replace('_', '-')}", type=parse_bool if isinstance(v, bool) else type(v), default=v)
    args = ap.parse_args(argv)
    recipe = recipe_cls(**{f: getattr(args, f) for f in defaults})
    try:
        check_recipe(recipe)
    except ValueError as err:
        ap.error(str(err))
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out}: exists and is not a folder")
    return recipe, args.out, args.log


def run_trainer_main(train: Any, recipe: Any, out: Path, log: Path | None) -> dict:
    """``train(recipe, out, log)`` with the errors a user can cause (a bad --init or --preset, settings that do
    not combine) as one line on stderr and exit code 2."""
    import sys

    from ..errors import UserError

    try:
        return train(recipe, out, log)
    except (UserError, ValueError, KeyError, OSError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None


def write_training_info(out: Path, recipe: Any, metrics: dict, render_s: float, t0: float) -> dict:
    """``<out>/training.json``: the recipe, final validation metrics and wall times."""
    import torch

    info = {"recipe": asdict(recipe), "val": metrics, "render_s": render_s, "wall_s": time.time() - t0,
            "threads": torch.get_num_threads()}
    from ..checkpoint import atomic_write_bytes

    atomic_write_bytes(out / "training.json", (json.dumps(info, indent=2) + "\n").encode())
    return info
