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


def recipe_from_argv(recipe_cls: type, description: str, argv: list[str] | None) -> tuple[Any, Path, Path | None]:
    """``--out``, ``--log`` and one ``--field`` flag per recipe dataclass field -> (recipe, out, log)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--log", type=Path, default=None, help="JSONL log file")
    defaults = asdict(recipe_cls())
    for f, v in defaults.items():
        ap.add_argument(f"--{f.replace('_', '-')}", type=parse_bool if isinstance(v, bool) else type(v), default=v)
    args = ap.parse_args(argv)
    return recipe_cls(**{f: getattr(args, f) for f in defaults}), args.out, args.log


def write_training_info(out: Path, recipe: Any, metrics: dict, render_s: float, t0: float) -> dict:
    """``<out>/training.json``: the recipe, final validation metrics and wall times."""
    import torch

    info = {"recipe": asdict(recipe), "val": metrics, "render_s": render_s, "wall_s": time.time() - t0,
            "threads": torch.get_num_threads()}
    from ..checkpoint import atomic_write_bytes

    atomic_write_bytes(out / "training.json", (json.dumps(info, indent=2) + "\n").encode())
    return info
