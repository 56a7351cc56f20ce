"""How many cores the worker of `transform.second_core` may count on.

Scope: a cgroup CPU quota is read from real files laid out as the kernel does, cgroup v2
(`cpu.max`) and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`), in the process's own
cgroup (from `/proc/self/cgroup`) and the ones above it, the smallest limit winning; an
unlimited or unreadable one is no limit; a quota of one CPU starts no worker. These run on
any machine (the worker tests need two cores).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conversion_platform.transform import second_core


@pytest.fixture(autouse=True)
def fresh_worker() -> Iterator[None]:
    second_core.stop_worker()
    yield
    second_core.stop_worker()


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.mark.parametrize(
    ("files", "membership", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, None, 1.5),  # v2 in its own namespace
        ({"cpu.max": "max 100000\n"}, None, None),  # v2, unlimited
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, None, 1.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None, None),
        ({"cpu.max": "garbage\n"}, None, None),
        ({}, None, None),  # no cgroup files at all
        # v2 without a namespace: the limit is on the process's own cgroup ...
        (
            {"cpu.max": "max 100000\n", "system.slice/app.service/cpu.max": "50000 100000\n"},
            "0::/system.slice/app.service\n",
            0.5,
        ),
        # ... or on one above it, and the smallest wins
        (
            {
                "system.slice/cpu.max": "100000 100000\n",
                "system.slice/app.service/cpu.max": "300000 100000\n",
            },
            "0::/system.slice/app.service\n",
            1.0,
        ),
        # v1 with the cpu controller in a cgroup of its own
        (
            {
                "cpu/docker/abc/cpu.cfs_quota_us": "200000\n",
                "cpu/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n",
            2.0,
        ),
    ],
)
def test_a_cgroup_cpu_quota_is_read(
    tmp_path: Path, files: dict[str, str], membership: str | None, quota: float | None
) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    write(root, files)
    proc = None
    if membership is not None:
        proc = tmp_path / "proc-self-cgroup"
        proc.write_text(membership)
    assert second_core.cgroup_cpu_quota(root, proc) == quota


def slow_pid(value: int) -> tuple[int, int]:
    time.sleep(0.001)
    return value, os.getpid()


def test_a_quota_of_one_cpu_starts_no_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    monkeypatch.setattr(second_core, "_CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(second_core, "_PROC_CGROUP", tmp_path / "no-such-file")
    assert second_core._usable_cores() == 1
    results = second_core.map_on_two_cores(slow_pid, [(3,)] * 50, min_items=1)
    assert results == [(3, os.getpid())] * 50
    assert second_core._worker is None
