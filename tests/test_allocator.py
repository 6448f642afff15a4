"""samclip.allocator: large freed buffers are reused by the next allocation instead of faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, torch
from samclip.allocator import tune_malloc
tuned = tune_malloc()
def faults_of_a_64mb_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 << 20)  # 64 MB, filled then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(tuned, *[faults_of_a_64mb_buffer() for _ in range(6)])
"""

def _probe(**env: str) -> tuple[bool, list[int]]:
    """(tuned, page faults of six 64 MB buffers allocated and freed in turn) in a fresh process."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "SAMCLIP_MALLOC_TUNE"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**full, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", [int(x) for x in out[1:]]


glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="glibc malloc only")


@glibc
def test_tuned_heap_reuses_a_freed_64mb_buffer() -> None:
    untuned, faults = _probe(SAMCLIP_MALLOC_TUNE="0")
    assert not untuned
    fresh = min(faults)
    if fresh < 1000:  # huge pages: a fresh 64 MB mapping is a few dozen faults, nothing to tell apart
        pytest.skip(f"a fresh 64 MB buffer took only {fresh} page faults here")
    tuned, faults = _probe()
    assert tuned
    # the first buffer is new memory; later ones reuse it (now and then one is placed anew while other small
    # allocations settle in the freed space, hence "most"), where untuned every one faults in ~16000 4 KB pages
    assert sum(f < fresh / 8 for f in faults[1:]) >= 3, faults


@glibc
def test_users_own_glibc_settings_win() -> None:
    tuned, _ = _probe(MALLOC_TRIM_THRESHOLD_="0")
    assert not tuned

