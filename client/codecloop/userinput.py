"""The CLI's checks of what a user typed: files, folders, dataset names and clip counts, each refused
with one line naming the flag (CodecLoopValueError, exit code 2), never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from codecloop.serverinfo import DatasetInfo, ServerInfo
from codecloop_wire.errors import CodecLoopValueError


def load_signature(path: str, flag: str = "--signature", population: bool = True) -> np.ndarray:
    """A float32 signature (T, H, W, 3), or with ``population`` also (P, T, H, W, 3), from a ``.npy``
    file, checked: the file exists, is a numeric array (no pickled objects are loaded) of that
    shape."""
    p = Path(path)
    if not p.is_file():
        raise CodecLoopValueError(f"{flag}: {path}: {'is a folder, not a file' if p.is_dir() else 'no such file'}")
    save = "save one with numpy.save(path, a float32 array (T, H, W, 3))"
    try:
        with p.open("rb") as f:
            if f.read(6) != b"\x93NUMPY":  # the .npy magic: anything else (text, a pickle) is no array file
                raise CodecLoopValueError(f"{flag}: {path} is not a .npy array file; {save}")
        arr = np.load(p, allow_pickle=False)
    except ValueError as err:
        if isinstance(err, CodecLoopValueError):
            raise
        what = "holds Python objects, not numbers" if "allow_pickle" in str(err) else f"cannot be read as an array ({err})"
        raise CodecLoopValueError(f"{flag}: {path} {what}; {save}") from None
    except (OSError, EOFError) as err:
        raise CodecLoopValueError(f"{flag}: {path} cannot be read: {err}") from None
    if not isinstance(arr, np.ndarray) or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CodecLoopValueError(f"{flag}: {path} holds {getattr(arr, 'dtype', type(arr).__name__)}, not numbers")
    if arr.ndim not in ((4, 5) if population else (4,)) or arr.shape[-1] != 3:
        expected = "(T, H, W, 3)" + (" or a population (P, T, H, W, 3)" if population else "")
        raise CodecLoopValueError(f"{flag}: {path} has shape {arr.shape}; expected {expected}")
    return arr.astype(np.float32)


def check_dataset_arg(text: str, flag: str = "--dataset") -> None:
    """A ``--dataset`` written as a path (it has a path separator, or starts with ``.`` or ``~``)
    must be an existing folder: refused naming it otherwise, before any server starts."""
    if not (os.sep in text or text.startswith((".", "~"))):
        return  # a dataset name, checked against the server's list
    path = Path(text).expanduser()
    if path.is_file():
        raise CodecLoopValueError(f"{flag}: {text} is a file; give the folder that holds the videos")
    if not path.is_dir():
        raise CodecLoopValueError(f"{flag}: {text}: no such folder")


def dataset_info(info: ServerInfo, name: str, flag: str = "--dataset") -> DatasetInfo:
    """The DatasetInfo called ``name`` in a ServerInfo, else an error naming the flag and the choices."""
    try:
        return info.dataset(name)
    except CodecLoopValueError as err:
        raise CodecLoopValueError(f"{flag}: {str(err).removeprefix('dataset: ')}") from None


def clip_count(dataset: DatasetInfo, split: str, clips: int, flag: str = "--clips") -> int:
    """``clips`` checked against ``split`` of ``dataset`` (a DatasetInfo): 0 means the whole split."""
    if split not in dataset.split_clips:
        raise CodecLoopValueError(f"--split: dataset {dataset.name!r} has no split {split!r}; it has {', '.join(sorted(dataset.split_clips))}")
    size = dataset.split_clips[split]
    if clips < 0 or clips > size:
        raise CodecLoopValueError(f"{flag}: {clips} is outside [0, {size}] for split {split!r} of dataset {dataset.name!r} ({size} clips); 0 = all {size}")
    return clips or size
