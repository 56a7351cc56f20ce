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
