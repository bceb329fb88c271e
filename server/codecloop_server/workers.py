"""The codec worker processes: each spawned worker runs one task at a time over its own pipe.

Why not ProcessPoolExecutor: its workers share one result queue, so a worker killed while writing
a result (kill -9, the OOM killer) leaves a half-written message that blocks the executor's
manager thread forever, and any death breaks the whole pool. Here every worker has its own pipe
and its own manager thread: a death is seen as EOF on that pipe or the process sentinel, only the
task that worker was running fails (with :class:`WorkerDied`, which the scheduler retries once),
and a fresh worker is spawned in its place (``restarts`` counts them).

Watchdog: a task still running ``task_timeout_s`` after it was handed to its worker means the
worker hangs (or was stopped with SIGSTOP): the worker is killed and replaced and the task fails
with WorkerDied like any other death. :meth:`WorkerPool.responsive` counts the workers that can
make progress now (alive, not stopped, no task past the timeout); the server's health follows it.
Shutdown never waits on a worker: whatever has not exited after ``grace_s`` is killed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

log = logging.getLogger("codecloop.server")

IDLE_CHECK_S = 1.0  # how often an idle manager thread checks that its worker is still alive
_PROC = Path("/proc/self/stat")
# glibc mallopt parameters (malloc.h) and the worker's values, in bytes
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
WORKER_TRIM_THRESHOLD = 256 << 20
WORKER_MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit


class WorkerDied(Exception):
    """The worker process running a task died before answering (killed, out of memory, crashed),
    or hung past the task timeout and was killed."""


def keep_freed_memory() -> None:
    """Make glibc malloc keep freed memory in this process instead of returning it to the kernel.

    Why: a clip task allocates and frees some MB (the encoder's buffers, numpy temporaries of
    a few MB each). With glibc's defaults (the adaptive mmap threshold, and a trim threshold twice
    that, depend on what the process freed before) a spawned worker's heap top is trimmed after
    every task and the next task faults it back in, zero-filled: measured at
    112x112 medium about 1,500-2,000 minor page faults and 6-8 ms of kernel time per task, a quarter
    of the task's CPU (benchmarks/engine_bench.py). A worker's heap stays at its peak instead;
    blocks over ``WORKER_MMAP_THRESHOLD`` (clips of more than 32 MB) are still mapped per use.
    No effect on results; a no-op where libc has no ``mallopt`` (not glibc).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, WORKER_MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, WORKER_TRIM_THRESHOLD)


def _worker_main(conn: Connection) -> None:
    """A worker: (fn, args) in, ("ok", result) or ("err", exception) out, until None or EOF."""
    keep_freed_memory()
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        fn, args = msg
        try:
            reply = ("ok", fn(*args))
        except Exception as err:  # the task's own error goes back to its request
            reply = ("err", err)
        try:
            conn.send(reply)
        except Exception as err:  # an unpicklable result or exception
            conn.send(("err", RuntimeError(f"task result could not be sent back: {type(err).__name__}: {err}")))


def _stopped_or_dead(pid: int | None) -> bool:
    """True when the process cannot run: gone, a zombie, or stopped (SIGSTOP, a debugger)."""
    if pid is None:
        return True
    if not _PROC.exists():  # no procfs: only death is visible
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("T", "t", "Z", "X")


class WorkerPool:
    """``workers`` spawned processes with an Executor-like ``submit``; see the module docstring.

    Args:
        workers: number of processes.
        task_timeout_s: the longest one task may run in a worker before the worker is killed and
            replaced (None: no limit).
    """

    def __init__(self, workers: int, task_timeout_s: float | None = None) -> None:
        self.workers = workers
        self.task_timeout_s = task_timeout_s
        self.restarts = 0
        self._ctx = multiprocessing.get_context("spawn")  # no forked gRPC or torch threads
        self._tasks: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        # per slot: its current process and since when (time.monotonic()) it runs a task, or None
        self._procs: list[multiprocessing.process.BaseProcess | None] = [None] * workers
        self._busy_since: list[float | None] = [None] * workers
        self._threads = [threading.Thread(target=self._slot, args=(i,), name=f"codec-worker-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._closed:
            raise RuntimeError("the worker pool is shut down")
        fut: Future = Future()
        self._tasks.put((fut, fn, args))
        return fut

    def responsive(self) -> int:
        """Workers that can make progress now: alive, not stopped, and not past the task timeout."""
        now, count = time.monotonic(), 0
        for proc, since in zip(list(self._procs), list(self._busy_since)):
            overdue = since is not None and self.task_timeout_s is not None and now - since > self.task_timeout_s
            if proc is not None and not overdue and not _stopped_or_dead(proc.pid):
                count += 1
        return count

    def shutdown(self, wait: bool = True, cancel_futures: bool = False, grace_s: float = 5.0) -> None:
        """Stop every worker; with ``wait``, return within about ``grace_s`` s: workers that have not
        finished by then (a long task, hung or stopped) are killed."""
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    item = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in self._threads:
            self._tasks.put(None)
        if wait:
            deadline = time.monotonic() + grace_s
            for t in self._threads:
                t.join(max(0.0, deadline - time.monotonic()))
            for proc in list(self._procs):
                if proc is not None and proc.is_alive():
                    proc.kill()  # SIGKILL ends a stopped process too
            for t in self._threads:
                t.join()

    def _spawn(self, slot: int) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child,), daemon=True)
        proc.start()
        child.close()  # the worker holds the only write end: its death is EOF here
        self._procs[slot] = proc
        return proc, parent

    def _next(self, slot: int, proc: multiprocessing.process.BaseProcess, conn: Connection):
        """The next task (None: shut down), replacing the worker if it dies while idle."""
        while True:
            try:
                return self._tasks.get(timeout=IDLE_CHECK_S), proc, conn
            except queue.Empty:
                if not proc.is_alive() and not self._closed:
                    self._count_death(proc)
                    proc, conn = self._respawn(slot, proc, conn)

    def _slot(self, slot: int) -> None:
        proc, conn = self._spawn(slot)
        try:
            while True:
                item, proc, conn = self._next(slot, proc, conn)
                if item is None:
                    return
                fut, fn, args = item
                if not fut.set_running_or_notify_cancel():
                    continue
                if not proc.is_alive():  # died between tasks: this task has not run yet
                    self._count_death(proc)
                    proc, conn = self._respawn(slot, proc, conn)
                name = getattr(fn, "__name__", str(fn))
                self._busy_since[slot] = time.monotonic()
                try:
                    conn.send((fn, args))
                    ready = wait([conn, proc.sentinel], timeout=self.task_timeout_s)
                    if not ready:
                        proc.kill()  # hung or stopped: SIGKILL works on a stopped process too
                        raise TimeoutError(f"no answer within task_timeout_s = {self.task_timeout_s:g} s (hung or stopped); killed")
                    if conn not in ready:
                        raise EOFError
                    kind, value = conn.recv()  # EOFError if it died half-way through its answer
                except (EOFError, OSError) as err:  # TimeoutError is an OSError
                    # counted before the caller hears of it: its retry may finish before the respawn
                    self._count_death(proc)
                    fut.set_exception(WorkerDied(f"codec worker pid {proc.pid} died running {name} ({err!r})"))
                    if self._closed:
                        return
                    proc, conn = self._respawn(slot, proc, conn)
                    continue
                except Exception as err:  # the answer arrived but could not be unpickled
                    fut.set_exception(err)
                    continue
                finally:
                    self._busy_since[slot] = None
                (fut.set_result if kind == "ok" else fut.set_exception)(value)
        finally:
            try:
                conn.send(None)
            except OSError:
                pass
            proc.join(timeout=1 if self._closed else 10)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
            self._procs[slot] = None

    def _count_death(self, proc: multiprocessing.process.BaseProcess) -> None:
        with self._lock:
            self.restarts += 1
            restarts = self.restarts
        log.warning("codec worker pid %s died; a new one replaces it (%d restarts)", proc.pid, restarts)

    def _respawn(
        self, slot: int, proc: multiprocessing.process.BaseProcess, conn: Connection
    ) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        conn.close()
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        log.info("codec worker pid %s exit code %s; respawning slot %d", proc.pid, proc.exitcode, slot)
        return self._spawn(slot)
