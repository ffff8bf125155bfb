"""Process-level settings that make CPU inference faster.

Segmentation models allocate and free many large activations per image. glibc
serves allocations above 128 KiB with fresh mmap()s and unmaps them on free, so
every layer pays page faults on memory it just gave back; on small VMs that is
a quarter of the MobileSAM encoder's time. Raising the mmap and trim thresholds
makes glibc keep freed memory for reuse: the peak footprint is unchanged, it is
just not returned to the OS between frames.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def keep_freed_memory() -> bool:
    """Apply once per process (glibc on Linux only); MASKML_DEFAULT_MALLOC=1 opts out.
    Returns whether the setting is in effect."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("MASKML_DEFAULT_MALLOC") == "1":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    _done = ok
    return ok
