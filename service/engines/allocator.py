"""The C allocator's thresholds for the transformers engine on CPU: freed memory kept for reuse.

torch's CPU tensors come from the C library's ``malloc``. glibc's serves a block over its mmap
threshold (128 KiB at first, rising with use up to 32 MiB) with a fresh mapping, unmapped
again when freed, and gives memory at the heap's top back to the system once more than the
trim threshold is free. A forward pass allocates and frees many activations of a few MiB
each, so their pages fault in again on every pass. On the default judge, a 750-token prompt
took 1.21-1.30 s in a new process and 1.02-1.06 s with the thresholds below. In a long-running
server glibc's thresholds rise with use, so the gain there is smaller (``bench/engines.py``'s
``transformers-glibc-defaults`` setup measures it).

``keep_freed_memory`` sets, through ``mallopt``, the mmap threshold to glibc's largest (32 MiB)
and the trim threshold to 1 GiB: freed activations stay in the heap for the next pass, and the
process's resident memory stays near its peak instead of shrinking after a burst. PyTorch's CPU
tuning guide and vLLM's CPU docs preload a caching allocator (jemalloc, tcmalloc) for the same
reason; this needs no library and nothing in the environment at start. It is process-wide and
changes no result. With another C library it does nothing.
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger(__name__)

# mallopt's parameters (malloc.h) and the values set.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for it on 64-bit hosts (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process. Returns whether both were set
    (False where the C library is not glibc)."""
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        logger.info("the C library is not glibc: its allocator keeps its own thresholds")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not done:
        logger.warning("glibc refused the allocator thresholds: freed activations go back to the system")
    return done
