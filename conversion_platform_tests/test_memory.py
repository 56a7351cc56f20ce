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


_FREED_LARGE_BLOCKS = (
    "import os, sys\n"
    "if sys.argv[1] == 'package':\n"
    "    import conversion_platform.memory as memory\n"  # importing the package is all
    "    print(memory._LIBC is not None and hasattr(memory._LIBC, 'mallopt'))\n"
    "else:\n"
    "    print('True')\n"
    "def anon():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('RssAnon:'): return int(line.split()[1]) // 1024\n"
    "pins = []\n"
    "before = anon()\n"
    "for _ in range(4):\n"
    "    arrays = [bytearray(5_000_000) for _ in range(20)]\n"  # column-sized blocks
    "    pins.append(bytes(100_000))\n"  # a live block above them on the heap
    "    del arrays\n"
    "print(anon() - before)\n"
)


def _resident_after_freeing_large_blocks(with_package: bool) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run(
        [sys.executable, "-c", _FREED_LARGE_BLOCKS, "package" if with_package else "plain"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    fixed, grown = done.stdout.split()
    return fixed == "True", int(grown)


def test_freed_column_sized_blocks_leave_the_process() -> None:
    """glibc raises its threshold for mapping a block on its own each time such a block
    is freed; then 5 MB arrays come from the heap and stay resident once freed. The
    package fixes the threshold, so they are unmapped when freed."""
    fixed, grown_with_package = _resident_after_freeing_large_blocks(with_package=True)
    if not fixed:
        pytest.skip("the C library is not glibc: its threshold can't be set")
    _, grown_without = _resident_after_freeing_large_blocks(with_package=False)
    assert grown_without > 60  # MiB: a round of freed arrays stays resident without the fix
    assert grown_with_package < 30


def test_a_threshold_the_user_chose_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from conversion_platform.memory import THRESHOLD_VARIABLE, fix_large_block_threshold

    monkeypatch.setenv(THRESHOLD_VARIABLE, "131072")
    assert fix_large_block_threshold() is False
