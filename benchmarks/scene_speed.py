"""Scene-world generation speed on one CPU core: prints images/s per resolution.

Usage: ``python benchmarks/scene_speed.py [--n 300] [--sizes 256 128 64] [--supersample 1]``
"""

from __future__ import annotations

import argparse
import os
import time

from samclip.allocator import tune_malloc
from samclip.data import generate_scene, single_object_scene


def measure(size: int, n: int, supersample: int, single: bool) -> float:
    """Images per second for ``n`` consecutive seeds at ``size`` (after a short warm-up)."""
    make = single_object_scene if single else generate_scene
    for seed in range(5):
        make(seed, size, supersample=supersample)
    start = time.perf_counter()
    for seed in range(1000, 1000 + n):
        make(seed, size, supersample=supersample)
    return n / (time.perf_counter() - start)


def main() -> None:
    tune_malloc()  # both sides of every comparison run with the same allocator (samclip.allocator)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="scenes per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 128, 64])
    parser.add_argument("--supersample", type=int, default=1)
    parser.add_argument("--all-cores", action="store_true", help="do not pin the process to one core")
    args = parser.parse_args()
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    for size in args.sizes:
        for single in (False, True):
            rate = measure(size, args.n, args.supersample, single)
            kind = "single_object_scene" if single else "generate_scene"
            print(f"{kind:>19} size={size:>3} supersample={args.supersample}: {rate:7.1f} images/s")


if __name__ == "__main__":
    main()
