"""A slow pure-Python function mapped over many values on two cores: here and one worker.

Normalising a phone number with `phonenumbers` costs about 70 µs of pure Python, and
an hour of a million log lines holds over a hundred thousand distinct numbers: seconds
that hold the GIL while the machine's other core waits. `map_on_two_cores` shares the
values with a worker process: the caller works through the chunks from the front, a
feeder thread hands the worker one chunk at a time from the back, and they stop where
they meet. The result is `[fn(*args) for args in items]`, in order, whichever side
computed each chunk: `fn` must be a module-level function (the worker imports it by
name) whose result depends only on its arguments.

The worker is `python -m conversion_platform.transform.second_core`, started once per
process and kept (about 110 MB resident: it imports this package), reading pickled
chunks on its stdin and answering on its stdout; it exits when the pipe closes. It is a
plain subprocess rather than `multiprocessing`, whose spawned children import the
parent's main script again (running an unguarded script twice). Lists shorter than
`min_items` never use it. `Prefetch` hands the worker values ahead of time instead,
while the caller does other work (ingest: an hour's phone numbers, chunk by chunk, while
its lines are parsed). If the worker can't start, dies or fails on a chunk, the
caller computes that chunk itself (a failure in `fn` is then raised here, with its
traceback), and a dead worker is not started again: a broken worker costs time, never
values.
"""

from __future__ import annotations

import atexit
import math
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

#: Items below which the worker is not worth its messages.
MIN_ITEMS = 20_000
#: Items per message to the worker.
CHUNK_ITEMS = 1_000
#: Seconds a worker gets to exit when this process does.
_EXIT_WAIT_S = 5.0
#: Seconds to wait for any part of a reply (a cold worker imports this package first).
_REPLY_TIMEOUT_S = 120.0
_HEADER = struct.Struct("<Q")


class _WorkerFailed(Exception):
    """The worker could not compute a chunk (its reason went to its stderr)."""


def _apply(fn: Callable[..., T], items: Sequence[tuple[Any, ...]]) -> list[T]:
    return [fn(*args) for args in items]


def _send(stream: IO[bytes], data: bytes) -> None:
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_exact(fd: int, size: int, timeout: float | None) -> bytes:
    """`size` bytes from a pipe; EOFError when it closes, TimeoutError when a part of
    the message takes longer than `timeout` seconds."""
    parts: list[bytes] = []
    left = size
    while left:
        if timeout is not None and not select.select([fd], [], [], timeout)[0]:
            raise TimeoutError(f"no reply within {timeout:.0f} s")
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            raise EOFError("the pipe closed")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _receive_bytes(fd: int, timeout: float | None = None) -> bytes:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, timeout))
    return _read_exact(fd, size, timeout)


#: Where the cgroup hierarchy is mounted, and where this process says it sits in it.
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def _usable_cores() -> int:
    """Cores this process may run on: its affinity (not the host's count), and no more
    than its cgroup's CPU quota allows (a container limited to one CPU on a many-core
    host gains nothing from a worker: the two would share the one CPU's time)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(_CGROUP_ROOT, _PROC_CGROUP)
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota + 0.5)))
    return cores


def cgroup_cpu_quota(root: Path, membership: Path | None = None) -> float | None:
    """The CPUs' worth of time this process's cgroup may use per period, the smallest
    limit of its cgroup and every cgroup above it (None: unlimited, or none can be read).

    `root` is where the hierarchy is mounted; `membership` (`/proc/self/cgroup`) says
    which cgroup the process is in (without it, or in a container's own namespace, the
    root itself). cgroup v2 `cpu.max` ("max 100000" or "150000 100000"), else v1
    `cpu/cpu.cfs_quota_us` over `cpu/cpu.cfs_period_us`.
    """
    v2_path, v1_path = "/", "/"
    try:
        for line in (membership.read_text() if membership else "").splitlines():
            number, controllers, path = line.split(":", 2)
            if number == "0" and not controllers:
                v2_path = path
            elif "cpu" in controllers.split(","):
                v1_path = path
    except (OSError, ValueError):
        pass
    limits = [
        *(_v2_limit(folder) for folder in _folders(root, v2_path)),
        *(_v1_limit(folder) for folder in _folders(root / "cpu", v1_path)),
    ]
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _folders(mount: Path, path: str) -> list[Path]:
    """`mount/path` and each folder above it up to `mount`."""
    folder = mount / path.strip("/")
    out = [folder]
    while folder != mount and mount in folder.parents:
        folder = folder.parent
        out.append(folder)
    return out


def _v2_limit(folder: Path) -> float | None:
    try:
        fields = (folder / "cpu.max").read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
    except (OSError, ValueError, ZeroDivisionError):
        pass
    return None


def _v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


class _Worker:
    """One worker process and the pipes to it; used by one call at a time."""

    def __init__(self, preload: str | None) -> None:
        env = dict(os.environ)
        # The worker imports what this process imports, wherever it was found.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        command = [sys.executable, "-m", __name__, *([preload] if preload else [])]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self.owner_pid = os.getpid()
        self.busy = threading.Lock()

    def alive(self) -> bool:
        return self.owner_pid == os.getpid() and self.process.poll() is None

    def map_chunk(self, fn: Callable[..., T], items: Sequence[tuple[Any, ...]]) -> list[T]:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            request = pickle.dumps((fn, list(items)), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # a function the worker can't import (a lambda, say)
            raise _WorkerFailed(type(exc).__name__) from exc
        _send(self.process.stdin, request)
        status, payload = pickle.loads(
            _receive_bytes(self.process.stdout.fileno(), _REPLY_TIMEOUT_S)
        )
        if status != "ok":
            raise _WorkerFailed(payload)
        if not isinstance(payload, list) or len(payload) != len(items):
            raise EOFError("a reply of the wrong length: the pipe is out of step")
        return payload

    def stop(self) -> None:
        if self.owner_pid != os.getpid():
            return  # a forked child's copy: the worker belongs to the parent
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()  # the worker exits at the end of its input
            self.process.wait(timeout=_EXIT_WAIT_S)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


_worker: _Worker | None = None
_worker_lock = threading.Lock()
#: Set when a worker could not start or died: this process then computes alone.
_unavailable = False


def _get_worker(preload: str | None = None) -> _Worker | None:
    """The process's worker, started on first use; None where there is no second core
    or a worker has failed."""
    global _worker, _unavailable
    with _worker_lock:
        if _worker is not None and not _worker.alive():
            _worker = None
            _unavailable = True
        if _worker is None and not _unavailable and _usable_cores() > 1:
            try:
                _worker = _Worker(preload)
            except OSError:
                _unavailable = True
        return _worker


def _retire(worker: _Worker) -> None:
    """A worker that failed in the pipe: stopped, and none started again."""
    global _worker, _unavailable
    with _worker_lock:
        _unavailable = True
        if _worker is worker:
            _worker = None
    worker.process.kill()
    worker.process.wait()


def stop_worker() -> None:
    """Stop the worker (a later call starts a new one)."""
    global _worker, _unavailable
    with _worker_lock:
        worker, _worker, _unavailable = _worker, None, False
    if worker is not None:
        worker.stop()


def _forget_after_fork() -> None:
    """A forked child starts without its parent's worker (and with unheld locks)."""
    global _worker, _worker_lock, _unavailable
    _worker, _worker_lock, _unavailable = None, threading.Lock(), False


atexit.register(stop_worker)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def map_on_two_cores(
    fn: Callable[..., T],
    items: Sequence[tuple[Any, ...]],
    *,
    min_items: int | None = None,
    chunk_items: int | None = None,
) -> list[T]:
    """`[fn(*args) for args in items]`, computed here and by the worker at once
    (`min_items` and `chunk_items` default to `MIN_ITEMS` and `CHUNK_ITEMS`)."""
    min_items = MIN_ITEMS if min_items is None else min_items
    chunk_items = CHUNK_ITEMS if chunk_items is None else chunk_items
    worker = _get_worker() if len(items) >= min_items else None
    if worker is None or not worker.busy.acquire(blocking=False):
        return _apply(fn, items)
    starts = range(0, len(items), chunk_items)
    parts: list[list[T] | None] = [None] * len(starts)
    lock = threading.Lock()
    front, back = 0, len(starts)  # chunks [front, back) are nobody's yet

    def feed() -> None:
        nonlocal back
        while True:
            with lock:
                if front >= back:
                    return
                back -= 1
                index = back
            try:
                parts[index] = worker.map_chunk(
                    fn, items[starts[index] : starts[index] + chunk_items]
                )
            except _WorkerFailed:
                return  # the chunk is left to the caller, which raises fn's error itself
            except Exception:  # a broken pipe, a timeout, a garbled reply: never used again
                _retire(worker)
                return

    feeder = threading.Thread(target=feed, name="second-core-feeder", daemon=True)
    feeder.start()
    try:
        while True:
            with lock:
                if front >= back:
                    break
                index = front
                front += 1
            parts[index] = _apply(fn, items[starts[index] : starts[index] + chunk_items])
    finally:
        with lock:
            back = front  # after an error here, the feeder stops at its current chunk
        feeder.join()
        worker.busy.release()
    results: list[T] = []
    for index, start in enumerate(starts):
        part = parts[index]
        results.extend(_apply(fn, items[start : start + chunk_items]) if part is None else part)
    return results


class Prefetch:
    """Values handed to the worker while the caller does other work, for a later call.

    `submit` queues items and returns at once; a feeder thread sends them to the worker
    a chunk at a time. `finish` waits for what was queued and returns each item's result,
    keyed by the item; an item the worker could not compute is missing, and the caller
    computes it then. The worker serves nobody else meanwhile (a `map_on_two_cores` call
    in between computes alone). Without a worker, `submit` keeps nothing.
    """

    def __init__(self, fn: Callable[..., T]) -> None:
        self._fn = fn
        self._results: dict[tuple[Any, ...], Any] = {}
        self._queue: queue.SimpleQueue[list[tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._cancelled = False
        worker = _get_worker(fn.__module__)
        self._worker = (
            worker if worker is not None and worker.busy.acquire(blocking=False) else None
        )

    def submit(self, items: Sequence[tuple[Any, ...]]) -> None:
        if self._worker is None or not items:
            return
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._feed, name="second-core-prefetch", daemon=True
            )
            self._thread.start()
        self._queue.put(list(items))

    def finish(self, cancel: bool = False) -> dict[tuple[Any, ...], Any]:
        """Wait for the queued items (`cancel`: only for the chunk being computed)."""
        worker, self._worker = self._worker, None
        if worker is None:
            return self._results
        try:
            if self._thread is not None:
                self._cancelled = cancel
                self._queue.put(None)
                self._thread.join()
        finally:
            worker.busy.release()
        return self._results

    def _feed(self) -> None:
        worker = self._worker
        assert worker is not None
        failed = False
        while (items := self._queue.get()) is not None:
            for start in range(0, len(items) if not failed else 0, CHUNK_ITEMS):
                if self._cancelled:
                    break
                chunk = items[start : start + CHUNK_ITEMS]
                try:
                    self._results.update(zip(chunk, worker.map_chunk(self._fn, chunk), strict=True))
                except _WorkerFailed:
                    continue  # left to the caller
                except Exception:  # a broken pipe, a timeout, a garbled reply
                    _retire(worker)
                    failed = True  # the rest is left to the caller; the queue is drained
                    break


def _serve(preload: str | None) -> None:
    """The worker: answer each chunk on stdin with ("ok", results) or ("error", reason)."""
    requests = sys.stdin.buffer.fileno()
    # Replies go through a copy of the pipe; whatever `fn` prints, from Python or from C,
    # goes to stderr and never into the protocol.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    # Ctrl-C reaches the whole process group: the caller decides, and the worker ends
    # when the caller's end of the pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if preload:
        __import__(preload)
    while True:
        try:
            data = _receive_bytes(requests)
        except EOFError:
            return
        try:
            fn, items = pickle.loads(data)
            # The undecorated function: a memo here would keep plaintext values for the
            # worker's life, out of reach of the caller's `clear_hashing_caches`.
            reply: tuple[str, object] = ("ok", _apply(getattr(fn, "__wrapped__", fn), items))
        except Exception as exc:  # reported, and the caller computes the chunk itself
            # The type only: the message may quote a value (personal data stays out of logs).
            print(f"second_core worker: {type(exc).__name__}", file=sys.stderr)
            reply = ("error", type(exc).__name__)
        _send(replies, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    _serve(sys.argv[1] if len(sys.argv) > 1 else None)
