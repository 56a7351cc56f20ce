"""Arrow's allocator in a process that imports the platform (a fresh interpreter each)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_SHOW_POOL = (
    "import conversion_platform, pyarrow as pa\n"
    "print(pa.default_memory_pool().backend_name)\n"
    "import pyarrow.compute as pc\n"
    "before = pa.jemalloc_memory_pool().bytes_allocated()\n"
    "values = pc.add(pa.array(range(100_000)), 1)\n"
    "print(pa.jemalloc_memory_pool().bytes_allocated() - before >= 800_000)\n"
)


def _pool_in_fresh_process(chosen: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if chosen:
        env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    done = subprocess.run(
        [sys.executable, "-c", _SHOW_POOL], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def test_arrow_allocates_with_jemalloc_which_returns_freed_memory() -> None:
    assert _pool_in_fresh_process(None) == ["jemalloc", "True"]


@pytest.mark.parametrize("chosen", ["system", "mimalloc"])
def test_a_pool_the_user_chose_is_kept(chosen: str) -> None:
    assert _pool_in_fresh_process(chosen) == [chosen, "False"]
