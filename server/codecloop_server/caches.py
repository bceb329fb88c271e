"""The engine's two caches: clean work shared by every request (:class:`CleanCache`, leased per
request) and content-addressed results (:class:`ResultCache`).

* clean work (each carrier clip through each channel, and the scorer's features of it) is
  computed once and shared by every candidate, request and client, so a warm generation of P
  candidates on N clips costs P x N encodes, not (P + 1) x N;
* every (signature, epsilon, clip, channel, scorer) result is kept in a bounded LRU, so a repeated
  evaluation is answered without encoding.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from codecloop_server.shm import SharedArray
from codecloop_server.tasks import CleanRef, PoisonedScore


@dataclass
class CleanEntry:
    """A clean clip after one channel. For a worker scorer: its features and their time sum
    in shared memory (``ref`` for tasks); for a detector: the decoded clip and, when the detector
    takes no key, its score (a keyed detector scores it per candidate)."""

    shared: tuple[SharedArray, ...]
    ref: CleanRef | None
    encoded_bytes: int
    decoded: np.ndarray | None = None  # uint8 (T, H, W, 3), detectors only
    score: float | None = None

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shared) + (0 if self.decoded is None else self.decoded.nbytes)

    def release(self) -> None:
        """The cache lets go of its shared memory (tasks still reading it hold their own reference)."""
        for s in self.shared:
            s.release()


class _Slot:
    """One key of the clean cache: the work computing its entry, the entry once done, and how many
    requests hold it (wait for it or use it)."""

    __slots__ = ("key", "work", "entry", "holders")

    def __init__(self, key: Hashable, work: asyncio.Future[CleanEntry]) -> None:
        self.key = key
        self.work = work
        self.entry: CleanEntry | None = None
        self.holders = 0


class CleanCache:
    """LRU of clean entries, bounded by bytes.

    A request holds every key it uses in a :class:`CleanLease` from the moment it asks for it until
    the request ends, however it ends (done, failed, cancelled). One key is computed once however
    many requests wait for it. Held entries are never evicted; when the last holder of a key still
    being computed lets go, its work is cancelled (its queued clip task is dropped, never run).
    Eviction runs whenever an entry is completed or let go, so at every moment
    ``size_bytes <= max_bytes + bytes of the entries held by requests in progress``.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0

    def lease(self) -> CleanLease:
        return CleanLease(self)

    def _hold(self, key: Hashable, start: Callable[[], asyncio.Future[CleanEntry]], held: list[_Slot]) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            self.misses += 1
            slot = self._slots[key] = _Slot(key, start())
            slot.work.add_done_callback(functools.partial(self._filled, slot))
        else:
            self.hits += 1
            self._slots.move_to_end(key)
        slot.holders += 1
        held.append(slot)
        return slot

    def _filled(self, slot: _Slot, _work: object = None) -> None:
        work = slot.work
        failed = work.cancelled() or work.exception() is not None  # exception() also marks it retrieved
        if self._slots.get(slot.key) is not slot:  # dropped while its result was on the way
            if not failed:
                work.result().release()
            return
        if failed:  # the next request for this key computes it again
            del self._slots[slot.key]
            return
        slot.entry = work.result()
        self.size_bytes += slot.entry.nbytes
        self._evict()

    def _let_go(self, slots: list[_Slot]) -> None:
        for slot in slots:
            slot.holders -= 1
            if slot.holders == 0 and not slot.work.done():
                # nobody waits for it any more: stop computing it
                if self._slots.get(slot.key) is slot:
                    del self._slots[slot.key]
                slot.work.cancel()
        self._evict()

    def _evict(self) -> None:
        for key, slot in list(self._slots.items()):
            if self.size_bytes <= self.max_bytes:
                return
            if slot.entry is not None and slot.holders == 0:
                del self._slots[key]
                self.size_bytes -= slot.entry.nbytes
                slot.entry.release()

    @property
    def held(self) -> int:
        """Keys held by requests in progress (waiting for or using them)."""
        return sum(1 for s in self._slots.values() if s.holders)

    def clear(self) -> None:
        for slot in self._slots.values():
            if slot.entry is not None:
                slot.entry.release()
            else:
                slot.work.cancel()
        self._slots.clear()
        self.size_bytes = 0


class CleanLease:
    """The clean-cache keys one request holds; :meth:`release` (once, when the request ends) lets
    go of all of them, including those whose computation it was still waiting for."""

    def __init__(self, cache: CleanCache) -> None:
        self._cache = cache
        self._held: list[_Slot] = []
        self._released = False

    async def acquire(self, key: Hashable, start: Callable[[], asyncio.Future[CleanEntry]]) -> CleanEntry:
        """The entry for ``key``; on a miss ``start()`` begins computing it (called synchronously).

        The key is held from this call on, before any await, so no cancellation can lose it.
        """
        if self._released:
            raise RuntimeError("clean lease used after its request ended")
        slot = self._cache._hold(key, start, self._held)
        # shield: one holder being cancelled must not cancel the computation others wait on
        return await asyncio.shield(slot.work)

    def release(self) -> None:
        held, self._held, self._released = self._held, [], True
        self._cache._let_go(held)


class ResultCache:
    """Content-addressed results: (signature digest, epsilon, clip, channel, scorer) -> PoisonedScore."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, PoisonedScore] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> PoisonedScore | None:
        hit = self._entries.get(key)
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        return hit

    def put(self, key: Hashable, value: PoisonedScore) -> None:
        self._entries[key] = value
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def signature_digest(sig: np.ndarray) -> str:
    """Content address of a float32 signature (shape and bytes)."""
    h = hashlib.sha256(repr(sig.shape).encode())
    h.update(np.ascontiguousarray(sig, dtype=np.float32).tobytes())
    return h.hexdigest()
