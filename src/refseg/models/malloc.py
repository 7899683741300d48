"""glibc malloc tuning for CPU inference: reuse freed memory within a stage, return it between.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves blocks above its mmap
threshold (at most 32 MiB) with fresh ``mmap`` calls and unmaps them on ``free``, so every
new large temporary is page-faulted and zeroed by the kernel on first touch. SAM2's point
decoder allocates and frees tens-of-MiB temporaries hundreds of times per image: with
retention off (``REFSEG_RETAIN_FREED_MEMORY=0``) the stage benchmark's paper decode took 22.9 s
instead of 16.1 s, the fast preset's 5.7 s instead of 4.3 s (docs/speed.md).

- :func:`retain_freed_memory` (once per process, before the first heavy stage) raises the
  mmap and trim thresholds so freed blocks stay in the heap and are reused.
- :func:`release_freed_memory` (``malloc_trim``) hands the free heap memory back to the
  kernel; the segmenter calls it between stages and after each image, so resident memory
  follows the stage in progress instead of the largest stage so far.

Both act on the whole process, only on Linux with glibc, and do nothing when
:data:`RETAIN_FREED_MEMORY` is false.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

# REFSEG_RETAIN_FREED_MEMORY=0 (or 1) in the environment decides at import; the default is on.
RETAIN_FREED_MEMORY = os.environ.get("REFSEG_RETAIN_FREED_MEMORY", "1").strip() not in (
    "0",
    "false",
    "no",
    "off",
    "",
)
MALLOC_MMAP_THRESHOLD_BYTES = 1 << 30  # blocks below this come from the heap, not fresh mmaps
MALLOC_TRIM_THRESHOLD_BYTES = (1 << 31) - 1  # free heap memory kept before returning it to the kernel
_M_TRIM_THRESHOLD = -1  # glibc mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_malloc_tuned: bool | None = None  # None: not tried yet; then whether glibc accepted it
_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (musl's mallopt does nothing), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def retain_freed_memory() -> bool:
    """Let glibc keep and reuse freed large blocks instead of unmapping them (once per process).

    Returns:
        Whether glibc accepted the settings (now or on an earlier call).
    """
    global _malloc_tuned, _libc
    if _malloc_tuned is not None:
        return _malloc_tuned
    if not RETAIN_FREED_MEMORY:
        return False
    _malloc_tuned = False
    libc = _glibc()
    if libc is None:
        logger.debug("not glibc: freed memory is left to the C library's defaults")
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _malloc_tuned = (
        mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES) == 1
        and mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES) == 1
    )
    _libc = libc if _malloc_tuned else None
    logger.debug("glibc malloc thresholds raised: %s", _malloc_tuned)
    return _malloc_tuned


def release_freed_memory() -> bool:
    """Return the heap's free memory to the kernel (``malloc_trim(0)``), if retention is on.

    Cheap (a walk of the free lists); the next stage faults in what it needs again.

    Returns:
        Whether anything was attempted (retention is on and this is glibc).
    """
    if not _malloc_tuned or _libc is None:
        return False
    _libc.malloc_trim(0)
    return True
