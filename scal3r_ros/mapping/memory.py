"""Process memory: hand freed heap back to the OS, read the resident set size."""

from __future__ import annotations

import ctypes
import os
import resource


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS. A window allocates and frees hundreds of MB
    of temporaries; without this glibc keeps them and RSS creeps up over a long drive
    (measured: +12 % vs +1 % from 2000 to 4000 frames with the map at its cap)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def host_rss_bytes() -> int:
    """This process's resident set size (Linux statm; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
