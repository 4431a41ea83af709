"""Keep the C allocator from handing large blocks back to the system between network passes (glibc on Linux).

glibc serves every allocation over 32 MB (its largest dynamic threshold) with a fresh ``mmap`` and unmaps it when
freed, so each feature map of a 672-px tile costs page faults and zeroed pages on every pass. :func:`tune_allocator`
raises the mmap and trim thresholds to 256 MB, so such blocks come from the heap and are reused: 1.10x on
``pathseg nuclei`` over MoNuSeg test, 1.22x on ``pathseg wsi`` over the demo slide, at a higher but bounded peak
memory (freed blocks are kept for reuse; ``python benchmarks/allocator.py`` measures both). The ``pathseg``
command calls it (and its Dask workers); in your own Python, call it once before segmenting.
``PATHSEG_MALLOC=system`` leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
THRESHOLD_MB = 256


def tune_allocator(threshold_mb: int = THRESHOLD_MB) -> bool:
    """Set glibc's mmap and trim thresholds to ``threshold_mb`` MB for this process. Returns True if set; False
    elsewhere (not Linux, not glibc) or when ``PATHSEG_MALLOC=system``. Process-wide, like any allocator setting."""
    if os.environ.get("PATHSEG_MALLOC", "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    size = int(threshold_mb) << 20
    return mallopt(_M_MMAP_THRESHOLD, size) == 1 and mallopt(_M_TRIM_THRESHOLD, size) == 1
