"""Tiny random models for tests and examples (the real code path on a CPU in milliseconds), and a
``samclip serve`` subprocess for end-to-end tests, benchmarks and screenshots."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .data import SHAPES, class_prompts
from .factory import create_sam
from .models import CLIP, ClipHeadConfig, SamClip, clip_preset
from .tokenizer import ClipTokenizer


def random_clip(preset: str, seed: int = 0, vocab_size: int = 200) -> CLIP:
    """A random CLIP of ``preset`` with a BPE trained on the scene-world class prompts (attached as
    ``.tokenizer``; the text tower's vocabulary shrunk to it). Full-size presets serve speed benchmarks."""
    torch.manual_seed(seed)
    base = clip_preset(preset)
    tok = ClipTokenizer.train([p for s in SHAPES for p in class_prompts(s)] + ["a plain background"],
                              vocab_size=vocab_size, context_length=base.text.context_length)
    clip = CLIP.from_config(base.replace(text=base.text.replace(
        vocab_size=tok.vocab_size, sot_token_id=tok.sot_token_id, eot_token_id=tok.eot_token_id))).eval()
    clip.tokenizer = tok
    return clip


def tiny_clip(seed: int = 0) -> CLIP:
    """``clip-tiny`` with a BPE trained on the scene-world class prompts (attached as ``.tokenizer``)."""
    return random_clip("clip-tiny", seed)


def tiny_merged_model(seed: int = 0, dense_pool: int = 1) -> SamClip:
    """A random merged model from ``sam-tiny`` (128 px frame, grid 8) and :func:`tiny_clip`."""
    clip = tiny_clip(seed)
    sam = create_sam("sam-tiny").eval()
    head = ClipHeadConfig(mlp_hidden=16, out_dim=clip.config.embed_dim, dense_pool=dense_pool)
    return SamClip.from_teachers(sam, clip, head).eval()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_subprocess(model: str, log_path: Path, *extra_args: str,
                     timeout: float = 120.0) -> Iterator[tuple[subprocess.Popen, str]]:
    """``samclip serve --model MODEL`` in a subprocess on a free loopback port, its output in ``log_path``
    (``OMP_NUM_THREADS=1`` unless set). Yields ``(process, base_url)`` once ``/health`` answers; stops the
    server on exit. Raises RuntimeError with the log's tail when it exits or stays silent for ``timeout`` s."""
    url = f"http://127.0.0.1:{free_port()}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "samclip.cli", "serve", "--model", model, "--host", "127.0.0.1",
                                 "--port", url.rsplit(":", 1)[1], "--log-level", "warning", *extra_args],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited:\n{Path(log_path).read_text()[-3000:]}")
                if time.time() > deadline:
                    raise RuntimeError(f"server did not answer /health within {timeout:.0f} s")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    time.sleep(0.2)
            yield proc, url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
