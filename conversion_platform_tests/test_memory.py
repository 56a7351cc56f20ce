"""Giving memory back: Arrow's allocator and glibc's heap trim, each in a fresh interpreter."""

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


def test_the_free_heap_goes_back_to_the_system_on_glibc() -> None:
    """Freed blocks in the middle of glibc's heap stay resident until `malloc_trim`."""
    code = (
        "import ctypes, sys\n"
        "from conversion_platform.memory import return_free_heap\n"
        "def anon():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('RssAnon:'): return int(line.split()[1]) // 1024\n"
        "blocks = [bytes(2_000) + bytes([i % 256]) for i in range(200_000)]\n"
        "keep = blocks[-1:]\n"  # the top of the heap stays in use: glibc can't shrink it
        "del blocks\n"
        "before = anon()\n"
        "print(return_free_heap(), before - anon() > 200)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    if done.stdout.split()[0] == "False":
        pytest.skip("the C library is not glibc: nothing to trim")
    assert done.stdout.split() == ["True", "True"]
