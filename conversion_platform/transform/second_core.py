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
parent's main script again (running an unguarded script twice); a worker never starts
one of its own. Lists shorter than `min_items` never use it. `imap_on_two_cores` shares
a stream of a few large pieces instead, handing the worker the next piece whenever it is
idle (ingest: a log file's chunks of lines, parsed and checked on both cores). If the
worker can't start, dies or fails on a chunk, the caller computes that chunk itself (a
failure in `fn` is then raised here, with its traceback), and a dead worker is not
started again: a broken worker costs time, never values.
"""

from __future__ import annotations

import atexit
import importlib
import itertools
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

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


def stop_idle_worker() -> bool:
    """Stop the worker unless a call is using it (True if none is left running): after
    a heavy use, so the memory it grew does not stay resident while this process goes
    on to other work. A later call starts a new one."""
    with _worker_lock:
        worker = _worker
    if worker is None:
        return True
    if not worker.busy.acquire(blocking=False):
        return False
    try:
        stop_worker()
    finally:
        worker.busy.release()
    return True


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
    return SharedMap(fn, items, min_items=min_items, chunk_items=chunk_items).results()


class SharedMap(Generic[T]):
    """`map_on_two_cores` begun now and finished later.

    The worker starts on the items from the back at once, while the caller does other
    work; `results()` then has the caller compute from the front until the two meet, and
    returns `[fn(*args) for args in items]`. Until then the worker serves nobody else (a
    `map_on_two_cores` call in between computes alone). `close()` lets the worker go
    without the results (after an error in the work in between); `results()` closes too.
    """

    def __init__(
        self,
        fn: Callable[..., T],
        items: Sequence[tuple[Any, ...]],
        *,
        min_items: int | None = None,
        chunk_items: int | None = None,
    ) -> None:
        min_items = MIN_ITEMS if min_items is None else min_items
        self._fn, self._items = fn, items
        self._chunk_items = CHUNK_ITEMS if chunk_items is None else chunk_items
        self._starts = range(0, len(items), self._chunk_items)
        self._parts: list[list[T] | None] = [None] * len(self._starts)
        self._lock = threading.Lock()
        self._front, self._back = 0, len(self._starts)  # chunks [front, back) are nobody's yet
        self._feeder: threading.Thread | None = None
        worker = _get_worker() if len(items) >= min_items else None
        if worker is None or not worker.busy.acquire(blocking=False):
            return
        self._worker = worker
        self._feeder = threading.Thread(target=self._feed, name="second-core-feeder", daemon=True)
        self._feeder.start()

    def _chunk(self, index: int) -> Sequence[tuple[Any, ...]]:
        start = self._starts[index]
        return self._items[start : start + self._chunk_items]

    def _feed(self) -> None:
        while True:
            with self._lock:
                if self._front >= self._back:
                    return
                self._back -= 1
                index = self._back
            try:
                self._parts[index] = self._worker.map_chunk(self._fn, self._chunk(index))
            except _WorkerFailed:
                return  # the chunk is left to the caller, which raises fn's error itself
            except Exception:  # a broken pipe, a timeout, a garbled reply: never used again
                _retire(self._worker)
                return

    def close(self) -> None:
        """Stop handing chunks to the worker (its current one is finished) and free it."""
        feeder, self._feeder = self._feeder, None
        if feeder is None:
            return
        with self._lock:
            self._back = self._front  # the feeder stops at its current chunk
        feeder.join()
        self._worker.busy.release()

    def results(self) -> list[T]:
        try:
            while True:
                with self._lock:
                    if self._front >= self._back:
                        break
                    index = self._front
                    self._front += 1
                self._parts[index] = _apply(self._fn, self._chunk(index))
        finally:
            self.close()
        results: list[T] = []
        for index, part in enumerate(self._parts):
            results.extend(_apply(self._fn, self._chunk(index)) if part is None else part)
        return results


_END = object()


def _import(module: str) -> None:
    """Import a module (in the worker, ahead of the pieces that need it)."""
    importlib.import_module(module)


def imap_on_two_cores(
    fn: Callable[..., T], items: Iterable[tuple[Any, ...]], *, imports: Sequence[str] = ()
) -> Iterator[T]:
    """`fn(*args)` for each item of a stream, in order, computed here and by the worker.

    For work that comes in a few large pieces produced one at a time (ingest: a log
    file's chunks of lines, each parsed and checked). Whenever the worker has nothing
    queued, the next piece is handed to it (a feeder thread sends it and waits for the
    answer); otherwise the caller computes the piece itself, so neither side waits for
    the other. A piece still queued for the worker when the stream ends is taken back.
    Each result is yielded as soon as it and every result before it are done, so a
    consumer sees them in the stream's order while later pieces are being computed.

    A stream of one item never uses the worker, and the worker is handed pieces only once
    it has imported `fn`'s module and `imports` (the modules of functions passed in the
    pieces): a cold worker importing them would otherwise hold a piece for seconds.
    `fn` must be a module-level function whose result depends only on its arguments,
    with arguments and result that pickle.
    A piece the worker can't compute is computed here (an error in `fn` is then raised
    here); after a broken pipe the worker is retired and the caller goes on alone.
    """
    iterator = iter(items)
    first = next(iterator, _END)
    if first is _END:
        return
    second = next(iterator, _END)
    if second is _END:
        yield fn(*first)
        return
    stream = itertools.chain((first, second), iterator)
    worker = _get_worker(fn.__module__)
    if worker is None or not worker.busy.acquire(blocking=False):
        for args in stream:
            yield fn(*args)
        return
    handoff: queue.Queue[tuple[int, tuple[Any, ...]] | None] = queue.Queue(maxsize=1)
    done = threading.Condition()
    answers: dict[int, tuple[bool, Any]] = {}  # index -> (computed, result)
    retired = threading.Event()
    warm = threading.Event()  # the worker has imported what the pieces need

    def feed() -> None:
        try:
            worker.map_chunk(_import, [(fn.__module__,), *((m,) for m in imports)])
            warm.set()
        except _WorkerFailed:  # a module the worker can't import: the caller goes alone
            retired.set()
        except Exception:
            _retire(worker)
            retired.set()
        while (job := handoff.get()) is not None:
            index, args = job
            answer: tuple[bool, Any] = (False, None)  # left to the caller
            if not retired.is_set():
                try:
                    answer = (True, worker.map_chunk(fn, [args])[0])
                except _WorkerFailed:
                    pass
                except Exception:  # a broken pipe, a timeout, a garbled reply
                    _retire(worker)
                    retired.set()
            with done:
                answers[index] = answer
                done.notify()

    feeder = threading.Thread(target=feed, name="second-core-stream", daemon=True)
    feeder.start()
    with_worker: dict[int, tuple[Any, ...]] = {}  # pieces handed to the worker, by index
    next_out = 0

    def ready(wait: bool) -> tuple[bool, Any] | None:
        with done:
            while wait and next_out not in answers:
                done.wait()
            return answers.pop(next_out, None)

    def result(answer: tuple[bool, Any]) -> T:
        computed, value = answer
        args = with_worker.pop(next_out, None)
        if computed:
            return value
        assert args is not None
        return fn(*args)  # the worker couldn't: computed (or its error raised) here

    try:
        count = 0
        for index, args in enumerate(stream):
            count = index + 1
            if warm.is_set() and not retired.is_set():
                try:
                    handoff.put_nowait((index, args))
                    with_worker[index] = args
                except queue.Full:
                    pass
            if index not in with_worker:
                value = fn(*args)
                with done:
                    answers[index] = (True, value)
            while (answer := ready(wait=False)) is not None:
                yield result(answer)
                next_out += 1
        # The stream is over: a piece the worker hasn't started is computed here.
        try:
            job = handoff.get_nowait()
        except queue.Empty:
            job = None
        if job is not None:
            value = fn(*job[1])
            with done:
                answers[job[0]] = (True, value)
        while next_out < count:
            answer = ready(wait=True)
            assert answer is not None
            yield result(answer)
            next_out += 1
    finally:
        try:
            while True:
                handoff.get_nowait()  # pieces nobody started go with the stream
        except queue.Empty:
            pass
        handoff.put(None)
        feeder.join()
        worker.busy.release()


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
    global _unavailable
    _unavailable = (
        True  # what `fn` shares with "the worker" is computed here, not in a third process
    )
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
