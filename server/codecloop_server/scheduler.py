"""Fair dispatch of clip tasks from many clients onto one worker pool.

Each client (gRPC metadata ``client-id``, else its peer address) has its own queue. The pool is
kept just full (workers + 1 tasks in flight). The next task comes from, in order of precedence:
the highest ``priority`` among the queues' heads; then the client with the fewest queued tasks
(a 1-candidate validation call runs ahead of a 64-candidate population instead of interleaving
with it, so its latency stays near the idle latency); then round-robin among equals (clients
hammering with equal requests get equal shares). A stream of small requests can delay a bulk client,
never the reverse.
Queued tasks whose request was cancelled are skipped, never run. Past ``max_queued`` tasks a new
request is refused at once (CodecLoopBusyError -> UNAVAILABLE, which the SDK retries with backoff).

A task whose worker process dies (killed, out of memory, a crash in native code) comes back as
workers.WorkerDied (the pool has already started a replacement); the scheduler puts it back at the
head of its client's queue, once; a task that loses its worker twice fails its request with a
CodecLoopServerError, and every other request goes on.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter, OrderedDict
from concurrent.futures import Executor
from concurrent.futures import Future as PoolFuture
from typing import Any, Callable

from codecloop.errors import CodecLoopBusyError, CodecLoopLimitError, CodecLoopServerError

from codecloop_server.workers import WorkerDied

# (-priority, seq, future, fn, args, queued at (monotonic s), attempt)
_Item = tuple[int, int, asyncio.Future, Callable[..., Any], tuple[Any, ...], float, int]
MAX_ATTEMPTS = 2  # a task whose worker dies is run once more


class FairScheduler:
    def __init__(self, pool: Executor, slots: int, max_queued: int, max_client_queued: int | None = None) -> None:
        self.pool = pool  # workers.WorkerPool (anything with an Executor's submit)
        self.max_client_queued = max_queued if max_client_queued is None else max_client_queued
        self._slots = slots
        self.max_queued = max_queued
        self._queues: OrderedDict[str, list[_Item]] = OrderedDict()  # round-robin order = dict order
        self._seq = itertools.count()
        self.queued = 0
        self.in_flight = 0
        self.dispatched: Counter[str] = Counter()  # tasks sent to the pool, per client
        self.on_dispatch: Callable[[float], None] | None = None  # called with each task's queue wait

    def admit(self, client: str, tasks: int) -> None:
        """Refuse a request of ``tasks`` clip tasks at once when the queue cannot take it: over the
        client's own quota (CodecLoopLimitError), or over the whole queue (CodecLoopBusyError)."""
        mine = len(self._queues.get(client, ()))
        if mine + tasks > self.max_client_queued:
            raise CodecLoopLimitError(
                f"client {client!r}: {mine} clip tasks queued, this request adds {tasks}, per-client limit "
                f"max_client_queued_tasks = {self.max_client_queued}; wait for your earlier requests"
            )
        if self.queued + tasks > self.max_queued:
            raise CodecLoopBusyError(
                f"server busy: {self.queued} clip tasks queued, this request adds {tasks}, limit "
                f"max_queued_tasks = {self.max_queued}; retry with backoff"
            )

    def queued_by_client(self) -> dict[str, int]:
        return {c: len(q) for c, q in self._queues.items()}

    def submit(self, client: str, priority: int, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        fut = asyncio.get_running_loop().create_future()
        self._push(client, (-priority, next(self._seq), fut, fn, args, time.monotonic(), 1))
        self._pump()
        return fut

    def _push(self, client: str, item: _Item) -> None:
        heapq.heappush(self._queues.setdefault(client, []), item)
        self.queued += 1

    def _pop(self) -> tuple[str, _Item] | None:
        if not self._queues:
            return None
        # highest priority among the heads, then the shortest queue, then round-robin order
        client = min(self._queues, key=lambda c: (self._queues[c][0][0], len(self._queues[c])))
        queue = self._queues.pop(client)
        item = heapq.heappop(queue)
        if queue:
            self._queues[client] = queue  # to the back of the round-robin order
        self.queued -= 1
        return client, item

    def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while self.in_flight < self._slots:
            popped = self._pop()
            if popped is None:
                return
            client, item = popped
            _, _, fut, fn, args, queued_at, _ = item
            if fut.cancelled():
                continue  # its request was cancelled while queued: never runs
            self.in_flight += 1
            self.dispatched[client] += 1
            if self.on_dispatch is not None:
                self.on_dispatch(time.monotonic() - queued_at)
            pool_fut = self.pool.submit(fn, *args)
            pool_fut.add_done_callback(lambda pf, c=client, i=item: loop.call_soon_threadsafe(self._done, pf, c, i))

    @property
    def restarts(self) -> int:
        """Worker processes replaced after dying."""
        return getattr(self.pool, "restarts", 0)

    def _done(self, pool_fut: PoolFuture, client: str, item: _Item) -> None:
        self.in_flight -= 1
        fut, attempt = item[2], item[6]
        err = None if pool_fut.cancelled() else pool_fut.exception()
        if isinstance(err, WorkerDied):
            if fut.cancelled():
                pass  # its request is gone: nothing to retry
            elif attempt < MAX_ATTEMPTS:
                self._push(client, (*item[:6], attempt + 1))  # same priority and seq: back to the head
            else:
                fut.set_exception(
                    CodecLoopServerError(f"a codec worker died running this clip task {MAX_ATTEMPTS} times (killed, out of memory or crashed): {err}")
                )
        elif not fut.cancelled():
            if pool_fut.cancelled():
                fut.cancel()
            elif err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(pool_fut.result())
        self._pump()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
