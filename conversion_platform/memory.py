"""Handing memory the platform's processes no longer use back to the system.

An hour's stages allocate gigabytes and free most of it; what an allocator keeps for
reuse still counts in the process's resident memory, and the next stage's peak sits on
top of it. Two levers, both measured at a million records:

**Arrow's allocator.**
pyarrow allocates through mimalloc by default on Linux. mimalloc keeps the pages it has
freed to reuse them, so after dedupe and identity resolution a process held hundreds of
megabytes of Arrow memory it no longer used. jemalloc, which the pyarrow wheels bundle
too, hands freed pages back to the system within Arrow's decay time. In the pipeline
benchmark at a million records, with the same code: peak 3,383 MiB with mimalloc,
2,929-2,946 MiB with jemalloc, wall time the same within noise (87.9 s; 89.9-90.9 s).
The glibc allocator (`system`) did worse than both (4,090 MiB, on earlier code).

`ARROW_DEFAULT_MEMORY_POOL` set by the user (`jemalloc`, `mimalloc` or `system`) wins:
pyarrow reads it itself, and nothing here overrides it.

**glibc's heap** (`return_free_heap`). Parsing an hour of log lines allocates millions
of short-lived Python objects of more than 512 bytes (pymalloc's limit), which glibc
serves from its heap; once freed, glibc returns only the top of the heap to the system.
After server-log ingest of a million lines it held 1.1 GB of free heap; `malloc_trim`
gives those pages back (3,068 -> 1,933 MiB resident, in 43 ms).

**glibc's threshold for large blocks** (`fix_large_block_threshold`). glibc serves a
block of 128 KiB or more with a mapping of its own, unmapped when freed; but each time
such a block is freed it raises that threshold to the block's size (up to 32 MiB), so
after the first freed column-sized array, arrays of a few megabytes (a million-row
column of numbers or positions) come from the heap, and freed among live blocks they
stay resident. Fixing the threshold at 4 MiB (which also stops the raising) keeps those
arrays mapped. The hour as run at a million records, on the same code: peak 2,849 and
2,867 MiB against 2,941-2,954, wall time within noise (105.2-109.7 s against 104.7-106.6); at
256 KiB the peak was 2,813-2,822 MiB but the hour 8% slower (a mapping per block).
`MALLOC_MMAP_THRESHOLD_` set by the user wins: glibc reads it itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os

import pyarrow as pa

#: The environment variable pyarrow reads for its default pool.
POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


def use_returning_allocator() -> str:
    """Make jemalloc Arrow's default pool unless the user chose one; return the pool's
    name. A pyarrow built without jemalloc keeps its own default."""
    if not os.environ.get(POOL_VARIABLE):
        with contextlib.suppress(NotImplementedError):
            pa.set_memory_pool(pa.jemalloc_memory_pool())
    return pa.default_memory_pool().backend_name


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def return_free_heap() -> bool:
    """Give what Arrow's pool keeps unused and the free pages of glibc's heap back to the
    system (`malloc_trim(0)`); False where the C library is not glibc (Arrow's pool is
    still asked)."""
    pa.default_memory_pool().release_unused()
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)
    return True


#: Blocks from this size up get a mapping of their own from glibc, unmapped when freed.
LARGE_BLOCK_BYTES = 4 << 20
#: `mallopt`'s parameter for that threshold (glibc's `M_MMAP_THRESHOLD`).
_M_MMAP_THRESHOLD = -3
#: The environment variable glibc reads for it at start-up.
THRESHOLD_VARIABLE = "MALLOC_MMAP_THRESHOLD_"


def fix_large_block_threshold(size: int = LARGE_BLOCK_BYTES) -> bool:
    """Have glibc map every block of `size` bytes or more on its own (and stop raising
    that threshold); False where the C library is not glibc or the user chose one."""
    if _LIBC is None or not hasattr(_LIBC, "mallopt") or os.environ.get(THRESHOLD_VARIABLE):
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, size))
