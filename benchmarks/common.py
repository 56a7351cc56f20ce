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
    #: The process's peak resident memory (MiB) when each stage ended: the first stage
    #: whose figure reaches the final peak is the one that set it.
    peak_mb_after: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        started, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + time.process_time() - cpu
            self.peak_mb_after[name] = peak_rss_mb()

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
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    columns = list(columns)

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


def measure_command(
    command: Sequence[str], env: Mapping[str, str], cwd: Path = REPO_ROOT
) -> dict[str, Any]:
    """Run `command` from a small watcher process: wall time, peak memory, exit code, output.

    The watcher reports its children's peak resident memory, so only the command (and
    what it starts) counts, not the benchmark's own data generation: `peak_rss_mb` is
    the largest process's own peak (exact, from the kernel), `peak_tree_rss_mb` the
    largest sum over the command and every process under it (a worker process
    included), sampled every 0.1 s.
    """
    watcher = (
        "import json, os, resource, subprocess, sys, threading, time\n"
        "def tree_kb(root):\n"
        "    parent, rss = {}, {}\n"
        "    for name in os.listdir('/proc'):\n"
        "        if name.isdigit():\n"
        "            try:\n"
        "                with open(f'/proc/{name}/stat') as f:\n"
        "                    fields = f.read().rsplit(')', 1)[1].split()\n"
        "                parent[int(name)] = int(fields[1])\n"
        "                rss[int(name)] = int(fields[21]) * os.sysconf('SC_PAGE_SIZE') // 1024\n"
        "            except (OSError, IndexError, ValueError):\n"
        "                pass\n"
        "    mine, grew = {root}, True\n"
        "    while grew:\n"
        "        more = {p for p, pp in parent.items() if pp in mine} - mine\n"
        "        mine |= more\n"
        "        grew = bool(more)\n"
        "    return sum(rss.get(p, 0) for p in mine)\n"
        "started = time.perf_counter()\n"
        "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)\n"
        "peak = [0]\n"
        "def sample():\n"
        "    while child.poll() is None:\n"
        "        peak[0] = max(peak[0], tree_kb(child.pid))\n"
        "        time.sleep(0.1)\n"
        "sampler = threading.Thread(target=sample, daemon=True)\n"
        "sampler.start()\n"
        "out, err = child.communicate()\n"
        "wall = time.perf_counter() - started\n"
        "sampler.join()\n"
        "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "sys.stdout.write(json.dumps({'wall_s': wall, 'peak_rss_mb': usage.ru_maxrss / 1024,\n"
        "    'peak_tree_rss_mb': peak[0] / 1024,\n"
        "    'cpu_s': usage.ru_utime + usage.ru_stime, 'returncode': child.returncode,\n"
        "    'stdout': out[-20000:], 'stderr': err[-20000:]}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", watcher, *command],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(completed.stdout)
    result["wall_s"] = round(result["wall_s"], 2)
    result["cpu_s"] = round(result["cpu_s"], 2)
    result["peak_rss_mb"] = round(result["peak_rss_mb"], 1)
    result["peak_tree_rss_mb"] = round(result["peak_tree_rss_mb"], 1)
    return result


def dagster_command(*arguments: str) -> list[str]:
    """The `dagster` CLI of this Python environment."""
    return [sys.executable, "-m", "dagster", *arguments]


#: What the time before each Dagster event of a step was spent on.
_PHASE_OF_EVENT = {
    "LOADED_INPUT": "load inputs (IO manager: Parquet read)",
    "STEP_INPUT": "input type checks",
    "STEP_OUTPUT": "compute (+ output type check)",
    "HANDLED_OUTPUT": "store outputs (IO manager: Parquet write)",
    "ASSET_MATERIALIZATION": "compute (+ output type check)",
    "ASSET_CHECK_EVALUATION": "compute (+ output type check)",
    "ASSET_OBSERVATION": "compute (+ output type check)",
    "STEP_SUCCESS": "finish",
    "STEP_FAILURE": "finish",
}


def phase_before(kind: str, previous: str | None) -> str:
    """What a step spent the time before its event `kind` on (`previous`: its last event).

    Dagster stores an output between STEP_OUTPUT and the output's ASSET_MATERIALIZATION
    (HANDLED_OUTPUT follows at once), so that gap is the IO manager's write; any other
    materialization was logged by the computation itself.
    """
    if kind == "ASSET_MATERIALIZATION" and previous == "STEP_OUTPUT":
        return _PHASE_OF_EVENT["HANDLED_OUTPUT"]
    return _PHASE_OF_EVENT.get(kind, "other")


def run_step_timings(dagster_home: str) -> dict[str, Any]:
    """Child-process helper: step and phase durations of every run in a Dagster instance,
    from the event log in its run storage (oldest run first)."""
    os.environ["DAGSTER_HOME"] = dagster_home
    import dagster as dg

    instance = dg.DagsterInstance.get()
    runs = []
    for record in reversed(instance.get_run_records()):
        run = record.dagster_run
        entries = instance.all_logs(run.run_id)
        steps: dict[str, dict[str, Any]] = {}
        last: dict[str, float] = {}
        previous: dict[str, str] = {}
        run_start = run_end = None
        for entry in entries:
            event = entry.dagster_event
            if event is None:
                continue
            kind = event.event_type.name  # names, not values: RUN_START's value is legacy
            if kind == "RUN_START":
                run_start = entry.timestamp
            elif kind in ("RUN_SUCCESS", "RUN_FAILURE"):
                run_end = entry.timestamp
            step = entry.step_key
            if step is None:
                continue
            info = steps.setdefault(step, {"seconds": 0.0, "phases": {}, "status": None})
            if kind == "STEP_START":
                info["start"] = entry.timestamp
                last[step] = entry.timestamp
                continue
            if step in last:
                phase = phase_before(kind, previous.get(step))
                gap = entry.timestamp - last[step]
                info["phases"][phase] = round(info["phases"].get(phase, 0.0) + gap, 3)
                last[step] = entry.timestamp
            previous[step] = kind
            if kind in ("STEP_SUCCESS", "STEP_FAILURE"):
                info["seconds"] = round(entry.timestamp - info.get("start", entry.timestamp), 3)
                info["status"] = kind
        for info in steps.values():
            info.pop("start", None)
        runs.append(
            {
                "run_id": run.run_id,
                "status": run.status.value,
                "partition_range": [
                    run.tags.get("dagster/asset_partition_range_start"),
                    run.tags.get("dagster/asset_partition_range_end"),
                ],
                "partition": run.tags.get("dagster/partition"),
                "run_seconds": round(run_end - run_start, 3) if run_start and run_end else None,
                "steps": steps,
            }
        )
    return {"runs": runs}
