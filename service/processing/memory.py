"""Giving freed memory back to the operating system after a mass eviction.

When thousands of aggregates leave at once (their workers idle past the
timeout), Python frees their objects, but the C allocator keeps most of the
pages: glibc returns only the top of its heap on its own, so a burst of
100,000 aggregates leaves the process that much larger for good, however
idle it becomes. ``malloc_trim(0)`` hands every wholly free page back
(``madvise``), at the cost of one walk over the allocator's free lists: a
few milliseconds, done once per sweep that evicted many workers.

Elsewhere than glibc (musl, macOS) there is no such call and nothing is
done: the memory is still reused by the process, only not returned.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Return the allocator's wholly free pages to the operating system;
    whether anything was returned (False where the allocator cannot)."""
    if _TRIM is None:
        return False
    return bool(_TRIM(0))
