"""What every benchmark shares: the machine, fresh homes, timers, peak memory, child runs."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

#: The repository root (benchmarks run from it, so `seeds/` resolves).
REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Where benchmark homes live unless `BENCHMARK_WORK_DIR` says otherwise.
DEFAULT_WORK_DIR = Path(os.environ.get("BENCHMARK_WORK_DIR", "/tmp/conversion-platform-bench"))
#: Environment variables a benchmark home must not inherit (credentials, overrides).
_INHERITED_PREFIXES = ("CONVERSION_PLATFORM_", "DAGSTER_HOME")


def machine() -> dict[str, Any]:
    """The machine the figures come from: cores, CPU model, RAM, Python and library versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions = {}
    for name in ("pandas", "pyarrow", "numpy", "pandera", "dagster", "sqlalchemy", "orjson"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # a missing library is reported, not fatal
            versions[name] = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gb": ram_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def children_peak_rss_mb() -> float:
    """The largest peak resident memory of any finished child process (MiB)."""
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


def recent_hours(count: int, hours_ago: int = 2) -> list[datetime]:
    """`count` consecutive UTC hours ending `hours_ago` complete hours before now (oldest first).

    Delivery refuses events older than a platform's limit (7 days for Meta), so benchmark
    traffic is recent.
    """
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    last = now - timedelta(hours=hours_ago)
    return [last - timedelta(hours=count - 1 - i) for i in range(count)]


def partition_key(hour: datetime) -> str:
    return hour.strftime("%Y-%m-%d-%H:%M")


@dataclass
class Home:
    """A fresh CONVERSION_PLATFORM_HOME (and DAGSTER_HOME) for one benchmark."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def logs_dir(self) -> Path:
        return self.home / "server_logs"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.home / 'platform.db'}"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The process environment for this home: inherited settings and credentials removed."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_INHERITED_PREFIXES)
            and not k.endswith(("_ACCESS_TOKEN", "_API_TOKEN"))
        }
        env.update(
            {
                "CONVERSION_PLATFORM_HOME": str(self.home),
                "DAGSTER_HOME": str(self.dagster_home),
                "CONVERSION_PLATFORM_LOGS_DIR": str(self.logs_dir),
                "PYTHONPATH": str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            }
        )
        env.update(extra or {})
        return env

    def activate(self, extra: Mapping[str, str] | None = None) -> None:
        """Point this process's environment at the home (for in-process stages)."""
        for key in list(os.environ):
            if key.startswith(_INHERITED_PREFIXES) or key.endswith(("_ACCESS_TOKEN", "_API_TOKEN")):
                del os.environ[key]
        os.environ.update({k: v for k, v in self.env(extra).items() if k != "PYTHONPATH"})


def fresh_home(name: str, work_dir: Path | None = None) -> Home:
    """An empty home under the work folder (an earlier one of the same name is removed)."""
    root = (work_dir or DEFAULT_WORK_DIR) / name
    if root.exists():
        shutil.rmtree(root)
    home = Home(root)
    home.home.mkdir(parents=True)
    home.dagster_home.mkdir(parents=True)
    home.logs_dir.mkdir(parents=True)
    # The project's instance settings (run retries, pools, telemetry off).
    shutil.copy(REPO_ROOT / "dagster.yaml", home.dagster_home / "dagster.yaml")
    return home


@dataclass
class Stages:
    """Wall and CPU time of named stages, in order, with the rows each handled.

    CPU time (this process's user + system) says what a stage costs when the machine is
    shared: wall time grows with other processes' load, CPU time much less.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        started, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + time.process_time() - cpu

    def total(self) -> float:
        return sum(self.seconds.values())

    def cpu_total(self) -> float:
        return sum(self.cpu_seconds.values())


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the machine was (figures are noisy above nproc)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def run_child(
    module: str, function: str, kwargs: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Call `module.function(**kwargs)` in a fresh Python process; return its JSON result.

    A fresh process per measurement keeps peak memory honest (`ru_maxrss` never goes down)
    and keeps one size's caches from warming the next.
    """
    code = (
        "import json, sys, importlib\n"
        f"fn = getattr(importlib.import_module({module!r}), {function!r})\n"
        "result = fn(**json.loads(sys.argv[1]))\n"
        "sys.stdout.write('\\n@@RESULT@@' + json.dumps(result, default=str) + '\\n')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, json.dumps(dict(kwargs), default=str)],
        cwd=REPO_ROOT,
        env=dict(env) if env is not None else {**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    marker = completed.stdout.rfind("@@RESULT@@")
    if completed.returncode != 0 or marker < 0:
        raise RuntimeError(
            f"{module}.{function} failed (exit {completed.returncode}):\n"
            + completed.stderr[-4_000:]
        )
    return json.loads(completed.stdout[marker + len("@@RESULT@@") :])


def rate(count: float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of `rows` (numbers right-aligned, thousands separated)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, bool) or value is None:
            return "" if value is None else str(value)
        if isinstance(value, int):
            return f"{value:,}"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(row.get(c), int | float) or row.get(c) is None for row in rows)
        for c in columns
    ]
    lines = [
        "  ".join(
            c.rjust(w) if n else c.ljust(w)
            for c, w, n in zip(columns, widths, numeric, strict=True)
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append(
            "  ".join(
                v.rjust(w) if n else v.ljust(w) for v, w, n in zip(r, widths, numeric, strict=True)
            )
        )
    return "\n".join(lines)
