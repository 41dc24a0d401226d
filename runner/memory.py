"""Whether the process keeps freed memory for reuse (glibc's malloc), as CPU training wants.

torch's CPU tensors come from malloc. glibc serves a block larger than its mmap threshold
(which rises with use to at most 32 MiB) from a fresh mapping and unmaps it when freed,
and gives the heap's free top back beyond twice that, so each training iteration's large
tensors (an inner product's weight gradient: 134 MB for the ImageNet CNDS-8's fc6) start
as new pages that the kernel faults in and zeroes one 4 KiB page at a time: an fc6-sized
weight gradient took 64 ms that way against 18 ms into memory already touched. Kept,
freed blocks stay in malloc's heap and the next iteration's tensors reuse them once the
iteration's blocks have merged (glibc 2.36 cannot hand a freed block to the next
allocation of exactly its size: torch asks for 64-byte alignment, which requests a little
more). Measured on the ImageNet CNDS-8 train net, batch 8, fp32 channels_last (AMD EPYC,
2 threads): 370-410 ms per step against 540-610 ms, resident memory 1.17-1.25 GB against
1.09-1.12 GB, flat over 150 steps; with torch's own THP_MEM_ALLOC_ENABLE (huge pages,
set before torch loads) 390-460 ms. The solver turns this on for training on the CPU
(runner/solver/loop.py).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEPT_MMAP_THRESHOLD = 1 << 30          # blocks up to 1 GiB come from (and return to) the heap
KEPT_TRIM_THRESHOLD = (1 << 31) - 1    # free heap top given back only beyond 2 GiB
GLIBC_MMAP_THRESHOLD_CAP = 32 << 20    # where glibc's own dynamic threshold stops rising


@functools.lru_cache(maxsize=1)
def _glibc():
    """libc when it is glibc (it has mallopt and malloc_trim), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version   # glibc only
        libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def keep_freed_memory(keep: bool = True) -> bool:
    """Keep freed memory in the process for reuse (`keep`), or go back to glibc's own
    steady state (mmap threshold at its 32 MiB cap) and give freed memory back to the
    system. Returns False where the C library is not glibc (nothing changed)."""
    libc = _glibc()
    if libc is None:
        return False
    if keep:
        return bool(libc.mallopt(M_MMAP_THRESHOLD, KEPT_MMAP_THRESHOLD)
                    and libc.mallopt(M_TRIM_THRESHOLD, KEPT_TRIM_THRESHOLD))
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_CAP)
              and libc.mallopt(M_TRIM_THRESHOLD, 2 * GLIBC_MMAP_THRESHOLD_CAP))
    libc.malloc_trim(0)
    return ok
