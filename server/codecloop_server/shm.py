"""Arrays in POSIX shared memory, so worker tasks carry references instead of frames.

The server process owns every segment (creates and unlinks it). Workers read through
:func:`read`: long-lived segments (dataset clips) stay mapped per worker; short-lived ones
(signatures, clean features, inline clips) are copied out and closed at once, so unlinking them in
the server frees their memory.
"""

from __future__ import annotations

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
    """An array copied into a new shared-memory segment owned by this process."""

    def __init__(self, array: np.ndarray, persistent: bool = False) -> None:
        array = np.ascontiguousarray(array)
        self._shm = shared_memory.SharedMemory(create=True, size=max(array.nbytes, 1))
        self.array = np.ndarray(array.shape, array.dtype, buffer=self._shm.buf)
        self.array[...] = array
        self.array.flags.writeable = False
        self.ref = ArrayRef(self._shm.name, tuple(array.shape), array.dtype.str, persistent)
        self.nbytes = array.nbytes

    def release(self) -> None:
        """Unmap and unlink; idempotent. Views of ``array`` must not be used afterwards."""
        if self._shm is None:
            return
        del self.array
        self._shm.close()
        self._shm.unlink()
        self._shm = None


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


def read(ref: ArrayRef) -> np.ndarray:
    """The array behind ``ref``: a read-only view for persistent segments, else a private copy."""
    if ref.persistent:
        hit = _mapped.get(ref.name)
        if hit is None:
            shm = _attach(ref.name)
            view = np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=shm.buf)
            view.flags.writeable = False
            hit = _mapped[ref.name] = (shm, view)
        return hit[1]
    shm = _attach(ref.name)
    try:
        return np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=shm.buf).copy()
    finally:
        shm.close()
