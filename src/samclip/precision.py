"""When bfloat16 autocast is worth it, and the one autocast context every module uses.

bf16 autocast is the fast path only on hardware with native bf16 matrix units: CUDA GPUs with bf16
support, and x86 CPUs with AMX-BF16 or AVX512-BF16. On other CPUs (AVX2-only machines, most AMD EPYC
before Zen 4) PyTorch emulates bf16 matrix products, which is 10-200x SLOWER than fp32. So every
``bf16`` switch in samclip accepts ``None`` / ``"auto"`` (the default): bf16 where it is fast,
fp32 elsewhere. ``True`` / ``False`` force it either way. The environment variable ``SAMCLIP_BF16``
(``true`` / ``false``) overrides what ``auto`` means for the whole process, e.g. to evaluate in fp32 on a
bf16-capable CPU (``samclip eval --dtype fp32`` sets it).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

AUTO = "auto"
ENV_OVERRIDE = "SAMCLIP_BF16"  # true / false: what "auto" resolves to in this process
_TRUE = ("true", "1", "bf16", "yes")
_FALSE = ("false", "0", "fp32", "no")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices natively (AMX-BF16 or AVX512-BF16)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - private probes: any failure means "not known to be fast"
            continue
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and _flags_say_bf16()
    except Exception:  # noqa: BLE001
        return False


def _flags_say_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return False
    return " amx_bf16" in text or " avx512_bf16" in text


def describe_machine(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What a run's record should say about where it ran: results of the same recipe differ in their last
    bits between CPUs with different matrix kernels (AVX2, AVX512, AMX) and between fp32 and bf16."""
    dev = torch.device(device)
    info: dict[str, Any] = {"torch": torch.__version__, "device": str(dev), "threads": torch.get_num_threads(),
                            "bf16_auto": bf16_is_fast(dev)}
    if dev.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(dev)
    else:
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
        except OSError:
            flags = ""
        info["cpu_isa"] = next((isa for isa in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f" {isa}" in flags),
                               "unknown")
    return info


def bf16_is_fast(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 autocast speeds up matrix products on ``device`` (what ``auto`` resolves to, unless the
    ``SAMCLIP_BF16`` environment variable says otherwise)."""
    forced = os.environ.get(ENV_OVERRIDE, "").strip().lower()
    if forced and forced != AUTO:
        if forced not in _TRUE + _FALSE:
            raise ValueError(f"{ENV_OVERRIDE} must be true, false or auto, got {forced!r}")
        return forced in _TRUE
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return cpu_has_fast_bf16()
    return False


def resolve_bf16(flag: Any, device: str | torch.device = "cpu") -> bool:
    """``None`` / ``"auto"`` -> :func:`bf16_is_fast`; booleans and "true"/"false"/"1"/"0" strings as given."""
    if flag is None:
        return bf16_is_fast(device)
    if isinstance(flag, bool):
        return flag
    text = str(flag).strip().lower()
    if text == AUTO:
        return bf16_is_fast(device)
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"bf16 must be true, false or 'auto', got {flag!r}")


def autocast(device: str | torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on ``device`` (a no-op context when ``enabled`` is False)."""
    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=enabled)
