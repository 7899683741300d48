"""Process-wide settings for CPU inference, chosen by the program that runs refseg.

refseg's library code sets nothing process-wide: importing it, building a proposer or calling
``Segmenter.predict`` leave the environment, the C library's allocator and torch alone. A
program that runs refseg (the ``refseg`` command, a benchmark, a server) chooses here:

- :func:`prefer_huge_pages`: torch's 2 MiB transparent huge pages for large CPU tensors
  (``THP_MEM_ALLOC_ENABLE=1``), read by torch once when it is imported, so only effective
  when called before torch is. Fewer page faults when big temporaries come and go.
- :func:`retain_freed_memory` (once per process, before the first heavy stage): glibc keeps
  freed large blocks in the heap for reuse instead of unmapping them. PyTorch's CPU tensors
  come from ``malloc``; blocks above glibc's mmap threshold would be fresh ``mmap`` calls,
  page-faulted and zeroed by the kernel on first touch, and SAM2's point decoder allocates and
  frees tens-of-MiB temporaries hundreds of times per image.
- :func:`release_freed_memory` (``malloc_trim``) hands the free heap memory back to the
  kernel. Given to :class:`refseg.Segmenter` as ``between_stages``, it runs between SAM2, DINOv2
  and matching and after each image, so resident memory follows the stage in progress
  instead of the largest stage so far.
- :func:`tune_cpu_memory`: the first two, what the ``refseg`` command does at start.

Retention and trimming act only on Linux with glibc, and not at all when the environment
says ``REFSEG_RETAIN_FREED_MEMORY=0``. docs/speed.md has what each of them measured.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"
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


def prefer_huge_pages() -> bool:
    """Ask torch for 2 MiB transparent huge pages for large CPU tensors, if it is not imported yet.

    Sets ``THP_MEM_ALLOC_ENABLE=1`` in this process's environment unless the user set it
    (their value wins). torch reads it once, when it is imported, so after that nothing is set.

    Returns:
        Whether torch will use huge pages (the variable is "1" and torch is not imported yet).
    """
    if "torch" in sys.modules:
        logger.debug("torch is already imported: %s left as it is", HUGE_PAGES_VARIABLE)
        return False
    return os.environ.setdefault(HUGE_PAGES_VARIABLE, "1") == "1"


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


def tune_cpu_memory() -> bool:
    """The ``refseg`` command's memory policy: :func:`prefer_huge_pages` (when torch is not
    imported yet) and :func:`retain_freed_memory`. Pass :func:`release_freed_memory` to the
    segmenter as ``between_stages`` so the retained memory is handed back between stages.

    Returns:
        Whether freed memory is now retained.
    """
    prefer_huge_pages()
    return retain_freed_memory()
