"""Process-level settings for CPU runs."""

from __future__ import annotations

import ctypes
import sys

_M_TOP_PAD = -2  # glibc mallopt parameter: bytes of free memory kept at the top of the heap when trimming
_done = False


def reuse_freed_memory(pad_bytes: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep up to ``pad_bytes`` of freed memory at the top of its heap (``M_TOP_PAD``)
    instead of handing it back to the kernel after every large free.

    Every training step, token-cache chunk and prompt decode allocates and frees the same large tensors;
    by default glibc returns those pages and the next step faults fresh zeroed ones in. Measured on this
    project's 2-core machine: a stage-I merge step 0.48 -> 0.43 s and 1.4M -> 0.13M minor page faults over
    65 steps, with the same peak RSS. Results are unchanged (the allocator hands PyTorch the same 64-byte
    aligned blocks, only reused). Idempotent; returns False where the C library is not glibc."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    _done = bool(mallopt(_M_TOP_PAD, int(pad_bytes)))
    return _done
