"""Counting the floating-point operations of a piece of work, shared by the benchmark scripts.

A ratio of two counts is what a speed-up can reach when time follows the multiply-adds: the ceiling that a
measured ratio is read against. ``torch.utils.flop_counter``'s formulas count matrix products, convolutions and the
GPU attention kernels (forward and backward, recomputation under gradient checkpointing included); the CPU's
fused attention kernel is added here, with the same formulas as its GPU siblings. Elementwise work, norms and
softmax are not counted (a few % of a transformer's operations).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

_aten = torch.ops.aten
_registered = False


def _register_cpu_attention() -> None:
    """The CPU's fused scaled-dot-product attention (``_scaled_dot_product_flash_attention_for_cpu`` and its
    backward), which ``FlopCounterMode`` does not know: without it every attention costs 0 on a CPU."""
    global _registered
    if _registered:
        return

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001, ANN003
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,  # noqa: ANN001
                  **kwargs) -> int:  # noqa: ANN003
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    _registered = True


class _Counter(TorchDispatchMode):
    """Adds up ``flop_registry``'s formulas over every op dispatched (``FlopCounterMode``'s counting without
    its per-module tracking, whose autograd hooks fail on inference-mode tensors such as the Predictor's)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        formula = flop_registry.get(func._overloadpacket)
        if formula is None:  # under inference_mode composite ops (linear, matmul, einsum, conv2d, attention)
            with self:  # arrive whole: count what they decompose into
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations (2 per multiply-add) that ``fn()`` runs, forward and backward."""
    _register_cpu_attention()
    with _Counter() as counter:
        fn()
    return counter.total


def matmul_gflops_per_s(device: torch.device, bf16: bool, n: int = 2048, reps: int = 5) -> float:
    """This machine's rate on one large square matrix product (GFLOP/s, the median of ``reps``), in bf16 or
    fp32 on the current threads: what dense multiply-adds can reach here, the yardstick a FLOP count is
    turned into a floor time with."""
    import statistics
    import time

    from _timing import synchronize

    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9
