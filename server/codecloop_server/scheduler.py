"""Fair dispatch of clip tasks from many clients onto one worker pool.

Each client (its authenticated identity when authentication is on, else gRPC metadata
``client-id``, else its peer address) has its own queue. The pool is kept just full (workers + 1
tasks in flight). The next task comes from, in order of precedence: the highest ``priority`` among
the queues' heads; then the client with the fewest queued tasks (a 1-candidate validation call runs
ahead of a 64-candidate population instead of interleaving with it, so its latency stays near the
idle latency); then round-robin among equals (clients hammering with equal requests get equal
shares). A stream of small requests can delay a bulk client, never the reverse.

Cancelling a task's future (its request was cancelled, or nobody waits for its result any more)
drops it at once if it is still queued: it never runs, stops counting against the queue limits,
and its ``on_finish`` runs. A task already handed to the pool but not yet started in a worker is
withdrawn; one running in a worker runs to its end and its result is discarded. ``on_finish`` runs
exactly once per task, when it can no longer touch anything it references (the engine releases the
shared memory the task reads there). Past ``max_queued`` tasks a new request is refused at once
(CodecLoopBusyError -> UNAVAILABLE, which the SDK retries with backoff).

A task whose worker process dies (killed, out of memory, a crash in native code, or hung past the
pool's task timeout and killed) comes back as workers.WorkerDied (the pool has already started a
replacement); the scheduler puts it back at the head of its client's queue, once; a task that loses
its worker twice fails its request with a CodecLoopServerError, and every other request goes on.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future as PoolFuture
from dataclasses import dataclass, field
from typing import Any, Protocol

from codecloop_server.registry import shown
from codecloop_server.workers import WorkerDied
from codecloop_wire.errors import CodecLoopBusyError, CodecLoopLimitError, CodecLoopServerError

MAX_ATTEMPTS = 2  # a task whose worker dies is run once more


@dataclass(eq=False)
class _Task:
    """One clip task: queued -> running (in the pool) -> finished, or queued -> dropped."""

    order: tuple[int, int]  # (-priority, sequence number): heap order within its client's queue
    client: str
    label: str  # what it counts as once it ran (Engine.stats: EngineStats.encodes)
    future: asyncio.Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    on_finish: Callable[[], None] | None
    queued_at: float  # time.monotonic() s
    weight: int = 1  # clips in the task: queues, quotas and counters count clips
    attempt: int = 1
    state: str = "queued"
    pool_future: PoolFuture | None = field(default=None, repr=False)

    def __lt__(self, other: _Task) -> bool:
        return self.order < other.order


class Pool(Protocol):
    """What the scheduler needs of its workers (workers.WorkerPool)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> PoolFuture[Any]: ...

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None: ...


class FairScheduler:
    def __init__(self, pool: Pool, slots: int, max_queued: int, max_client_queued: int | None = None) -> None:
        self.pool = pool
        self.max_client_queued = max_queued if max_client_queued is None else max_client_queued
        self._slots = slots
        self.max_queued = max_queued
        # per client a heap that may still hold dropped tasks (skipped when they reach the head);
        # round-robin order = dict order
        self._queues: OrderedDict[str, list[_Task]] = OrderedDict()
        self._live: Counter[str] = Counter()  # queued tasks per client, dropped ones not counted
        self._seq = itertools.count()
        self.queued = 0
        self.in_flight = 0
        self.dispatched: Counter[str] = Counter()  # clips of the tasks sent to the pool, per client
        self.ran: Counter[str] = Counter()  # clips of the tasks that ran in a worker (to the end or until it died), per label
        self.on_dispatch: Callable[[float], None] | None = None  # called with each task's queue wait

    def admit(self, client: str, tasks: int) -> None:
        """Refuse a request of ``tasks`` clip tasks at once when the queue cannot take it: over the
        client's own quota (CodecLoopLimitError), or over the whole queue (CodecLoopBusyError)."""
        mine = self._live[client]
        if mine + tasks > self.max_client_queued:
            raise CodecLoopLimitError(
                f"client {shown(client)}: {mine} clip tasks queued, this request adds {tasks}, per-client limit "
                f"max_client_queued_tasks = {self.max_client_queued}; wait for your earlier requests"
            )
        if self.queued + tasks > self.max_queued:
            raise CodecLoopBusyError(
                f"server busy: {self.queued} clip tasks queued, this request adds {tasks}, limit "
                f"max_queued_tasks = {self.max_queued}; retry with backoff"
            )

    def queued_by_client(self) -> dict[str, int]:
        return {c: n for c, n in self._live.items() if n}

    def submit(
        self,
        client: str,
        priority: int,
        fn: Callable[..., Any],
        *args: Any,
        label: str = "task",
        on_finish: Callable[[], None] | None = None,
        weight: int = 1,
    ) -> asyncio.Future[Any]:
        """Queue ``fn(*args)`` for a worker; the future has its result. Cancel the future to drop it.
        ``weight``: the clips the task works on (queue limits, quotas and counters count clips)."""
        fut = asyncio.get_running_loop().create_future()
        task = _Task((-priority, next(self._seq)), client, label, fut, fn, args, on_finish, time.monotonic(), weight)
        fut.add_done_callback(lambda f: self._withdraw(task) if f.cancelled() else None)
        self._push(task)
        self._pump()
        return fut

    def _push(self, task: _Task) -> None:
        task.state = "queued"
        heapq.heappush(self._queues.setdefault(task.client, []), task)
        self._live[task.client] += task.weight
        self.queued += task.weight

    def _withdraw(self, task: _Task) -> None:
        """Its future was cancelled: drop it if queued; withdraw it from the pool if not yet started there."""
        if task.state == "queued":
            task.state = "dropped"
            self._live[task.client] -= task.weight
            if not self._live[task.client]:
                del self._live[task.client]
            self.queued -= task.weight
            self._finish(task)
        elif task.state == "running" and task.pool_future is not None:
            task.pool_future.cancel()  # succeeds only while it waits for a worker; _done follows

    def _pop(self) -> _Task | None:
        for client in list(self._queues):
            queue = self._queues[client]
            while queue and queue[0].state != "queued":
                heapq.heappop(queue)  # dropped while queued
            if not queue:
                del self._queues[client]
        if not self._queues:
            return None
        # highest priority among the heads, then the fewest queued tasks, then round-robin order
        client = min(self._queues, key=lambda c: (self._queues[c][0].order[0], self._live[c]))
        queue = self._queues.pop(client)
        task = heapq.heappop(queue)
        if queue:
            self._queues[client] = queue  # to the back of the round-robin order
        self._live[client] -= task.weight
        if not self._live[client]:
            del self._live[client]
        self.queued -= task.weight
        return task

    def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while self.in_flight < self._slots and (task := self._pop()) is not None:
            task.state = "running"
            self.in_flight += 1
            self.dispatched[task.client] += task.weight
            if self.on_dispatch is not None:
                self.on_dispatch(time.monotonic() - task.queued_at)
            try:
                task.pool_future = self.pool.submit(task.fn, *task.args)
            except RuntimeError as err:  # the pool is shut down: the server is stopping
                task.pool_future = PoolFuture()
                task.pool_future.set_exception(err)
            task.pool_future.add_done_callback(lambda _, t=task: loop.call_soon_threadsafe(self._done, t))

    @property
    def restarts(self) -> int:
        """Worker processes replaced after dying."""
        return getattr(self.pool, "restarts", 0)

    def _done(self, task: _Task) -> None:
        pool_fut, fut = task.pool_future, task.future
        self.in_flight -= 1
        err = None if pool_fut.cancelled() else pool_fut.exception()
        if not pool_fut.cancelled():
            self.ran[task.label] += task.weight
        if isinstance(err, WorkerDied) and not fut.done() and task.attempt < MAX_ATTEMPTS:
            task.attempt += 1
            self._push(task)  # same priority and sequence number: back to the head
        else:
            task.state = "finished"
            self._finish(task)
            if fut.done():
                pass  # its request is gone: the result is dropped
            elif pool_fut.cancelled():
                fut.cancel()
            elif isinstance(err, WorkerDied):
                fut.set_exception(
                    CodecLoopServerError(f"a codec worker died running this clip task {MAX_ATTEMPTS} times (killed, out of memory, crashed or hung): {err}")
                )
            elif err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(pool_fut.result())
        self._pump()

    @staticmethod
    def _finish(task: _Task) -> None:
        callback, task.on_finish, task.args = task.on_finish, None, ()
        if callback is not None:
            callback()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
