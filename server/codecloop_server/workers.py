"""The codec worker processes: each spawned worker runs one task at a time over its own pipe.

Why not ProcessPoolExecutor: its workers share one result queue, so a worker killed while writing
a result (kill -9, the OOM killer) leaves a half-written message that blocks the executor's
manager thread forever, and any death breaks the whole pool. Here every worker has its own pipe
and its own manager thread: a death is seen as EOF on that pipe or the process sentinel, only the
task that worker was running fails (with :class:`WorkerDied`, which the scheduler retries once),
and a fresh worker is spawned in its place (``restarts`` counts them).
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
from concurrent.futures import Future
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

log = logging.getLogger("codecloop.server")


class WorkerDied(Exception):
    """The worker process running a task died before answering (killed, out of memory, crashed)."""


def _worker_main(conn: Connection) -> None:
    """A worker: (fn, args) in, ("ok", result) or ("err", exception) out, until None or EOF."""
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


class WorkerPool:
    """``workers`` spawned processes with an Executor-like ``submit``; see the module docstring."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.restarts = 0
        self._ctx = multiprocessing.get_context("spawn")  # no forked gRPC or torch threads
        self._tasks: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._slot, name=f"codec-worker-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._closed:
            raise RuntimeError("the worker pool is shut down")
        fut: Future = Future()
        self._tasks.put((fut, fn, args))
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
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
            for t in self._threads:
                t.join()

    def _spawn(self) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child,), daemon=True)
        proc.start()
        child.close()  # the worker holds the only write end: its death is EOF here
        return proc, parent

    def _slot(self) -> None:
        proc, conn = self._spawn()
        try:
            while (item := self._tasks.get()) is not None:
                fut, fn, args = item
                if not fut.set_running_or_notify_cancel():
                    continue
                if not proc.is_alive():  # died between tasks: this task has not run yet
                    proc, conn = self._respawn(proc, conn)
                try:
                    conn.send((fn, args))
                    ready = wait([conn, proc.sentinel])
                    if conn not in ready:
                        raise EOFError
                    kind, value = conn.recv()  # EOFError if it died half-way through its answer
                except (EOFError, OSError) as err:
                    fut.set_exception(WorkerDied(f"codec worker pid {proc.pid} died running {getattr(fn, '__name__', fn)} ({err!r})"))
                    proc, conn = self._respawn(proc, conn)
                    continue
                except Exception as err:  # the answer arrived but could not be unpickled
                    fut.set_exception(err)
                    continue
                (fut.set_result if kind == "ok" else fut.set_exception)(value)
        finally:
            try:
                conn.send(None)
            except OSError:
                pass
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
            conn.close()

    def _respawn(self, proc: multiprocessing.process.BaseProcess, conn: Connection) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        conn.close()
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        with self._lock:
            self.restarts += 1
        log.warning("codec worker pid %s died (exit code %s); a new one replaces it (%d restarts)", proc.pid, proc.exitcode, self.restarts)
        return self._spawn()
