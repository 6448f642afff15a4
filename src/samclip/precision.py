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


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(word for line in f if line.startswith("flags") for word in line.split(":", 1)[1].split())
    except OSError:
        return frozenset()


def _flags_say_bf16() -> bool:
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def describe_machine(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What a run's record should say about where it ran: results of the same recipe differ in their last
    bits between CPUs with different matrix kernels (AVX2, AVX512, AMX) and between fp32 and bf16."""
    dev = torch.device(device)
    info: dict[str, Any] = {"torch": torch.__version__, "device": str(dev), "threads": torch.get_num_threads(),
                            "bf16_auto": resolve_bf16(AUTO, dev)}
    if dev.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(dev)
    else:
        flags = _cpu_flags()
        info["cpu_isa"] = next((isa for isa in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if isa in flags),
                               "unknown")
    return info


def bf16_is_fast(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 autocast speeds up matrix products on ``device``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return cpu_has_fast_bf16()
    return False


def _parse(text: str) -> bool | None:
    """"true"/"1"/"bf16"/"yes" -> True, "false"/"0"/"fp32"/"no" -> False, "auto" -> None; else ValueError."""
    text = text.strip().lower()
    if text == AUTO:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(text)


def resolve_bf16(flag: Any, device: str | torch.device = "cpu") -> bool:
    """Booleans and "true"/"false"/"1"/"0" strings as given; ``None`` / ``"auto"`` -> the ``SAMCLIP_BF16``
    environment variable when it is set to true or false, else :func:`bf16_is_fast`."""
    if isinstance(flag, bool):
        return flag
    try:
        value = None if flag is None else _parse(str(flag))
    except ValueError:
        raise ValueError(f"bf16 must be true, false or 'auto', got {flag!r}") from None
    if value is not None:
        return value
    forced = os.environ.get(ENV_OVERRIDE, "")
    try:
        value = _parse(forced) if forced.strip() else None
    except ValueError:
        raise ValueError(f"{ENV_OVERRIDE} must be true, false or auto, got {forced.strip().lower()!r}") from None
    return bf16_is_fast(device) if value is None else value


def autocast(device: str | torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on ``device`` (a no-op context when ``enabled`` is False)."""
    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=enabled)
