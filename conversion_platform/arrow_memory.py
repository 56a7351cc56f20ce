"""Which allocator Arrow uses in the platform's processes.

pyarrow allocates through mimalloc by default on Linux. mimalloc keeps the pages it has
freed to reuse them, so after dedupe and identity resolution a process held hundreds of
megabytes of Arrow memory it no longer used. jemalloc, which the pyarrow wheels bundle
too, hands freed pages back to the system within Arrow's decay time. In the pipeline
benchmark at a million records, with the same code: peak 3,383 MiB with mimalloc,
2,929-2,946 MiB with jemalloc, wall time the same within noise (87.9 s; 89.9-90.9 s).
The glibc allocator (`system`) did worse than both (4,090 MiB, on earlier code).

`ARROW_DEFAULT_MEMORY_POOL` set by the user (`jemalloc`, `mimalloc` or `system`) wins:
pyarrow reads it itself, and nothing here overrides it.
"""

from __future__ import annotations

import contextlib
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
