"""Load test of the HTTP service: concurrent clients against a real server on loopback.

Starts ``samclip serve`` in a subprocess on a free 127.0.0.1 port, uploads ``--images`` scene-world
images (256 px), then ``--clients`` threads (one httpx client each) send ``--requests`` requests in
total, a fixed mix of ``predict`` (one random foreground point, multimask), ``classify`` (the 12 shape
names) and ``semseg`` (2-3 shape names, every other one refined) on random uploaded images. Bounded
by the request count and ``--time-limit`` seconds; nothing leaves the loopback interface.

Prints JSON: errors (non-200 answers or exceptions; must be 0), requests done, wall time and
throughput, p50 / p95 / max latency per kind (ms), and the server's RSS (from /proc) before the
uploads, after the uploads and after the load.

Model: ``--model`` (default ``tiny-synthetic``); when it cannot be loaded, random weights of the same
architecture (``sam-synthetic`` + ``clip-synthetic`` presets) are saved to a temporary folder and
served instead (latency does not depend on the weight values).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_load.py
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from samclip.allocator import tune_malloc
from samclip.testing import serve_subprocess

SHAPE_NAMES = ["circle", "square", "triangle", "star", "hexagon", "ring", "cross", "heart", "crescent", "arrow",
               "ellipse", "pentagon"]


def resolve_model(name: str, tmp: Path) -> tuple[str, str]:
    import samclip

    try:
        samclip.load_model(name)
        return name, f"{name} (trained weights)"
    except (FileNotFoundError, KeyError, ValueError) as err:
        note = f"random weights, tiny-synthetic architecture ({name!r} unavailable: {type(err).__name__})"
    import torch

    from samclip.data import class_prompt_templates
    from samclip.models import CLIP, SamClip, clip_preset
    from samclip.predictor import BACKGROUND_PROMPTS
    from samclip.tokenizer import ClipTokenizer

    torch.manual_seed(0)
    sam = samclip.create_sam("sam-synthetic").eval()
    base = clip_preset("clip-synthetic")
    corpus = [t.format(s) for s in SHAPE_NAMES for t in class_prompt_templates()] + list(BACKGROUND_PROMPTS)
    tok = ClipTokenizer.train(corpus * 3, vocab_size=512, context_length=base.text.context_length)
    clip = CLIP.from_config(base.replace(text=base.text.replace(
        vocab_size=tok.vocab_size, sot_token_id=tok.sot_token_id, eot_token_id=tok.eot_token_id))).eval()
    clip.tokenizer = tok
    folder = tmp / "model"
    samclip.save_pretrained(SamClip.from_teachers(sam, clip).eval(), folder)
    return str(folder), note


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def main() -> None:
    tune_malloc()  # both sides of every comparison run with the same allocator (samclip.allocator)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-synthetic")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--time-limit", type=float, default=300.0, help="stop issuing requests after this many seconds")
    args = ap.parse_args()

    from samclip.data import generate_scene

    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp_dir:
        tmp = Path(tmp_dir)
        model, note = resolve_model(args.model, tmp)
        cache = ("--cache-size", str(max(args.images, 16)))
        with serve_subprocess(model, tmp / "server.log", *cache, timeout=120) as (proc, url):
            rss_start = rss_mb(proc.pid)
            scenes = [generate_scene(1000 + i, args.image_size) for i in range(args.images)]
            ids, upload_s = [], []
            with httpx.Client(base_url=url, timeout=60) as c:
                for sc in scenes:
                    buf = io.BytesIO()
                    Image.fromarray(sc.image).save(buf, format="PNG")
                    t0 = time.perf_counter()
                    r = c.post("/images", files={"file": ("scene.png", buf.getvalue(), "image/png")})
                    upload_s.append(time.perf_counter() - t0)
                    r.raise_for_status()
                    ids.append(r.json()["image_id"])
            rss_uploaded = rss_mb(proc.pid)

            kinds = ["predict", "classify", "semseg"]
            plan = [kinds[i % 3] for i in range(args.requests)]
            counter = itertools.count()
            lock = threading.Lock()
            latencies: dict[str, list[float]] = {k: [] for k in kinds}
            errors: list[str] = []
            deadline = time.time() + args.time_limit

            def client(worker: int) -> None:
                rng = np.random.default_rng(worker)
                with httpx.Client(base_url=url, timeout=120) as c:
                    while time.time() < deadline:
                        i = next(counter)
                        if i >= len(plan):
                            return
                        kind = plan[i]
                        k = int(rng.integers(len(ids)))
                        if kind == "predict":
                            body = {"points": [[float(v) for v in rng.uniform(0, args.image_size, 2)]],
                                    "multimask": True}
                        elif kind == "classify":
                            body = {"labels": SHAPE_NAMES}
                        else:
                            words = list(rng.choice(SHAPE_NAMES, size=int(rng.integers(2, 4)), replace=False))
                            body = {"labels": words, "refine": bool(i % 2), "png": True}
                        t0 = time.perf_counter()
                        try:
                            r = c.post(f"/images/{ids[k]}/{kind}", json=body)
                            ok = r.status_code == 200
                            msg = f"{kind}: HTTP {r.status_code} {r.text[:200]}"
                        except httpx.HTTPError as err:
                            ok, msg = False, f"{kind}: {type(err).__name__}: {err}"
                        dt = time.perf_counter() - t0
                        with lock:
                            (latencies[kind] if ok else errors).append(dt if ok else msg)  # type: ignore[arg-type]

            t0 = time.perf_counter()
            threads = [threading.Thread(target=client, args=(w,)) for w in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            health = httpx.get(f"{url}/health", timeout=10).json()
            rss_end = rss_mb(proc.pid)

    done = sum(len(v) for v in latencies.values())
    print(json.dumps({
        "model": note, "images": args.images, "image_size": args.image_size, "clients": args.clients,
        "requests_planned": args.requests, "requests_done": done + len(errors), "errors": len(errors),
        "error_samples": errors[:5], "wall_s": round(wall, 2), "throughput_rps": round(done / wall, 1),
        "upload_ms_p50": percentile(upload_s, 50),
        "latency_ms": {k: {"n": len(v), "p50": percentile(v, 50), "p95": percentile(v, 95),
                           "max": percentile(v, 100)} for k, v in latencies.items()},
        "server_rss_mb": {"start": rss_start, "after_uploads": rss_uploaded, "after_load": rss_end},
        "server_health_after": health, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
