"""Arrays in POSIX shared memory, so worker tasks carry references instead of frames.

The server process owns every segment (creates and unlinks it). A segment is unlinked when its last
holder lets go: its creator holds one reference, and the engine makes every clip task that reads it
hold another from when the task is queued until it has stopped (run, failed, or dropped from the
queue), so a cancelled request never frees memory that a queued or running task still reads.

Workers read through :func:`read`: long-lived segments (dataset clips) stay mapped per worker;
short-lived ones (signatures, clean features, inline clips) are copied out and closed at once, so
unlinking them in the server frees their memory. ``read(ref, index)`` copies one item along the first
axis only (one clip of an inline (N, T, H, W, 3) array, not all N).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np


@dataclass(frozen=True)
class ArrayRef:
    """Where an array lives: segment name, shape, dtype; ``persistent`` segments stay mapped in workers."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    persistent: bool = False


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
        self.ref = ArrayRef(self._shm.name, tuple(array.shape), array.dtype.str, persistent)
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
    for persistent segments, else a private copy of just that part."""
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
