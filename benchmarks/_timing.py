"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def parse_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """``--device`` (cpu or cuda[:N]) as a torch.device; a parser error where CUDA is not available."""
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: CUDA is not available")
    return dev


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (GPU kernels run asynchronously; a no-op on the CPU): call it at
    both ends of a timed region."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Median wall time of ``reps`` calls of ``fn`` after ``warmup`` untimed calls (allocator, kernels)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
