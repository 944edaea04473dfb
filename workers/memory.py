"""Keep freed tensor memory in the process for reuse, rather than handing it back to the OS.

glibc's malloc serves every allocation above 128 KiB (each Conv4 activation, each weight stacked
over a chunk's tasks) with a fresh `mmap` and unmaps it when freed, so every inner step
page-faults all of its buffers in again. Raising the thresholds serves them from the heap, where
freed buffers are reused from one step to the next (docs/performance.md). The price is that a
process keeps its peak heap; actors and the controller live for a job or longer anyway.
"""

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (<malloc.h>); 32 MiB is glibc's largest mmap threshold on 64-bit systems
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 2**30


def keep_freed_memory() -> bool:
    """Raise malloc's mmap and trim thresholds for this process; False where that is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    applied = bool(
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not applied:
        log.warning("malloc thresholds unchanged (not glibc?): inner loops may page-fault more")
    return applied
