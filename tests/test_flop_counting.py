"""The benchmarks' FLOP counter (benchmarks/_flops.py): the ceilings their ratios are read against."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _flops import count_flops  # noqa: E402


def test_count_flops_includes_the_cpu_attention_and_the_backward() -> None:
    b, h, n, d, out = 2, 4, 64, 32, 16
    q = torch.randn(b, h, n, d, requires_grad=True)
    lin = torch.nn.Linear(d, out)

    def work() -> None:
        o = F.scaled_dot_product_attention(q, q, q, attn_mask=torch.zeros(n, n))
        lin(o).sum().backward()

    scores = 2 * b * h * n * n * d  # one of the attention's two products (QK^T or PV)
    attention = 2 * scores + 5 * scores  # forward; backward recomputes the scores: 5 products (torch's formula)
    linear = 3 * 2 * b * h * n * d * out  # forward, grad input, grad weight
    assert count_flops(work) == attention + linear


def test_count_flops_under_inference_mode() -> None:
    """The Predictor's tensors are inference tensors: counting must not touch autograd."""
    x = torch.randn(8, 32)
    lin = torch.nn.Linear(32, 32)

    def work() -> None:
        with torch.inference_mode():
            lin(x)

    assert count_flops(work) == 2 * 8 * 32 * 32


def test_count_flops_composite_ops_under_inference_mode() -> None:
    x, w = torch.randn(2, 8, 32), torch.randn(32, 16)
    conv = torch.nn.Conv2d(3, 4, 3)

    def work() -> None:
        with torch.inference_mode():
            x @ w
            torch.einsum("bnc,cd->bnd", x, w)
            conv(torch.randn(1, 3, 8, 8))
            F.scaled_dot_product_attention(x[None], x[None], x[None])

    products = 2 * (2 * 2 * 8 * 32 * 16)
    convolution = 2 * 6 * 6 * 4 * 3 * 3 * 3
    attention = 2 * (2 * 2 * 8 * 8 * 32)
    assert count_flops(work) == products + convolution + attention
