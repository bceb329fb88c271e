"""Arrays in POSIX shared memory, so worker tasks carry references instead of frames.

The server process owns every segment (creates and unlinks it). A segment is unlinked when its last
holder lets go: its creator holds one reference, and the engine makes every clip task that reads it
hold another from when the task is queued until it has stopped (run, failed, or dropped from the
queue), so a cancelled request never frees memory that a queued or running task still reads.

Workers read through :func:`read`: long-lived segments (dataset clips) stay mapped per worker;
short-lived ones (signatures, clean features, inline clips) are copied out and closed at once, so
unlinking them in the server frees their memory. ``read(ref, index)`` copies one item along the first
axis only (one clip of an inline (N, T, H, W, 3) array, not all N).

Whole short-lived arrays of at most ``COPY_CACHE_ITEM_BYTES`` are also kept, read-only, in a small
per-process LRU of copies (``COPY_CACHE_BYTES`` in all): a candidate's signature and template are
read by every one of its clip tasks, a clip's clean time sum by every candidate, and attaching a
segment (open, mmap, page faults, munmap) costs more than the copy. Segments are immutable once
created, and ``ArrayRef.uid`` tells apart two segments that got the same POSIX name (names are
reused after unlink), so a kept copy is always the segment's content.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np


@dataclass(frozen=True)
class ArrayRef:
    """Where an array lives: segment name, shape, dtype; ``persistent`` segments stay mapped in workers.
    ``uid``: (creator pid, creation number in that process), unique where the name may not be."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    persistent: bool = False
    uid: tuple[int, int] = (0, 0)


_created = itertools.count(1)


class SharedArray:
    """An array copied into a new shared-memory segment owned by this process, with a count of its
    holders (the creator is the first): :meth:`retain` adds one, :meth:`release` drops one, and the
    last release unmaps and unlinks the segment. Thread-safe (the engine closes from another thread)."""

    def __init__(self, array: np.ndarray, persistent: bool = False) -> None:
        array = np.ascontiguousarray(array)
        self._shm: shared_memory.SharedMemory | None = shared_memory.SharedMemory(create=True, size=max(array.nbytes, 1))
        self.array = np.ndarray(array.shape, array.dtype, buffer=self._shm.buf)
        self.array[...] = array
        self.array.flags.writeable = False
        self.ref = ArrayRef(self._shm.name, tuple(array.shape), array.dtype.str, persistent, (os.getpid(), next(_created)))
        self.nbytes = array.nbytes
        self._holders = 1
        self._lock = threading.Lock()

    @property
    def holders(self) -> int:
        return self._holders

    def retain(self) -> SharedArray:
        """One more holder; each retain needs its own release."""
        with self._lock:
            if self._holders <= 0:
                raise RuntimeError(f"shared array {self.ref.name} was already freed")
            self._holders += 1
        return self

    def release(self) -> None:
        """One holder fewer; the last one unmaps and unlinks (views of ``array`` die with it)."""
        with self._lock:
            if self._holders <= 0:
                raise RuntimeError(f"shared array {self.ref.name} released more often than held")
            self._holders -= 1
            if self._holders:
                return
            shm, self._shm = self._shm, None
        del self.array
        shm.close()
        shm.unlink()


_mapped: dict[str, tuple[shared_memory.SharedMemory, np.ndarray]] = {}

COPY_CACHE_BYTES = 64 << 20
# a 16x112x112x3 float64 template is 4.8 MB: a candidate's signature and template stay kept while
# its tasks run (tasks are queued in candidate order)
COPY_CACHE_ITEM_BYTES = 8 << 20
# (name, uid) -> read-only copy, least recently used first; guarded by _copies_lock
_copies: OrderedDict[tuple[str, tuple[int, int]], np.ndarray] = OrderedDict()
_copies_bytes = 0
_copies_lock = threading.Lock()


def _attach(name: str) -> shared_memory.SharedMemory:
    # Python < 3.13 registers even an attached segment with the resource tracker (which workers
    # share with the server): registering here and unregistering later would drop the server's own
    # registration. Only the creator tracks and unlinks, so attach without registering.
    register = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register


def read(ref: ArrayRef, index: int | None = None) -> np.ndarray:
    """The array behind ``ref``, or only its item ``index`` along the first axis: a read-only view
    for persistent segments, a read-only copy kept in the LRU of copies for a whole small array,
    else a private copy of just that part."""
    if index is None and not ref.persistent and ref.uid != (0, 0):
        return _read_kept(ref)
    if ref.persistent:
        hit = _mapped.get(ref.name)
        if hit is None:
            shm = _attach(ref.name)
            view = np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=shm.buf)
            view.flags.writeable = False
            hit = _mapped[ref.name] = (shm, view)
        return hit[1] if index is None else hit[1][index]
    shm = _attach(ref.name)
    try:
        view = np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=shm.buf)
        part = (view if index is None else view[index]).copy()
        del view  # no export of the buffer may outlive close()
        return part
    finally:
        shm.close()


def _read_kept(ref: ArrayRef) -> np.ndarray:
    """A whole short-lived array through the LRU of copies (see the module docstring)."""
    global _copies_bytes
    key = (ref.name, ref.uid)
    with _copies_lock:
        hit = _copies.get(key)
        if hit is not None:
            _copies.move_to_end(key)
            return hit
    array = _copy_out(ref)
    if array.nbytes > COPY_CACHE_ITEM_BYTES:
        return array
    array.flags.writeable = False
    with _copies_lock:
        if key not in _copies:
            _copies[key] = array
            _copies_bytes += array.nbytes
        while _copies_bytes > COPY_CACHE_BYTES:
            _, old = _copies.popitem(last=False)
            _copies_bytes -= old.nbytes
    return array


def _copy_out(ref: ArrayRef) -> np.ndarray:
    """A private copy of the whole array behind a short-lived segment, closed at once."""
    shm = _attach(ref.name)
    try:
        view = np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=shm.buf)
        part = view.copy()
        del view  # no export of the buffer may outlive close()
        return part
    finally:
        shm.close()
