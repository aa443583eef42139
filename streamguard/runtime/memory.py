"""Letting memory that librdkafka frees go back to the OS, so RSS follows the load.

glibc's malloc raises its mmap threshold to the size of any mmapped block that is
freed, up to 32 MiB, and its trim threshold to twice that ("dynamic threshold").
librdkafka's fetch buffers are such blocks, so soon after a consumer starts they come
from the heap instead, and the heap keeps what they free. Over a million records the
sync service's RSS grew from 52 to 54-63 MiB and the async one's from 54 to 60-64; with
the thresholds held at glibc's defaults it ended at 52.5 and 54-55 (docs/consumer.md and
docs/benchmark-notes.md, *Memory*).

Holding them is what ``MALLOC_TRIM_THRESHOLD_=131072`` in the environment does, for the
whole process. It has a price: the freed buffers come back as fresh pages, 0.08-0.10 page
faults per record against 0.01-0.04, which cost 0.1-0.5 µs more kernel time per record
(median 0.34 over eleven pairs: about 3% of a sync service's CPU with the 4 MiB fetch
queue of before, about 1% with today's 2 MiB). So it is opt-in
(``ServiceOptions.release_memory``), for services whose memory matters more than that.
Any malloc tuning already in the environment is left as it is, and so is every
allocator but glibc's.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("streamguard.runtime")

# mallopt(3) parameter numbers, and glibc's default for both thresholds.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 128 * 1024

# Environment variables through which an operator tunes glibc's malloc already.
_TUNING = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)


def hold_malloc_thresholds() -> bool:
    """Hold glibc's trim and mmap thresholds at their defaults; True if it did.

    Idempotent. Does nothing (False) on another C library, or when the environment
    tunes malloc itself.
    """
    libc = _glibc()
    if libc is None:
        return False
    held = bool(
        libc.mallopt(M_MMAP_THRESHOLD, DEFAULT_THRESHOLD)
        and libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_THRESHOLD)
    )
    if not held:
        log.debug("mallopt refused to hold the malloc thresholds; RSS may stay high")
    return held


def _glibc() -> ctypes.CDLL | None:
    """glibc's handle, unless this is another C library or the environment tunes malloc
    (each said in a line: the operator asked for ``release_memory`` and gets nothing)."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):  # no such name: not glibc
        version = None
    if version is None:
        log.info("release_memory does nothing here: the C library is not glibc")
        return None
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    tuned = [name for name in _TUNING if name in os.environ]
    if tuned or "glibc.malloc." in tunables:
        log.info(
            "release_memory leaves malloc as the environment tunes it",
            extra={"tuned_by": ", ".join(tuned) or "GLIBC_TUNABLES"},
        )
        return None
    return ctypes.CDLL(None)
