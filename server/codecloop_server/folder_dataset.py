"""Folder datasets: a folder of videos / ``.npy`` / ``.npz`` arrays served as one dataset (corpus.Dataset).

Files are read in sorted order, each file one source. A file that cannot be read (not a video PyAV
decodes, no video stream, a broken array) or holds less than one clip is skipped with a warning and
its reason (``Dataset.skipped``, published by GetServerInfo), or refused when ``strict`` (``serve
--strict-datasets``). A video (anything PyAV decodes) is streamed into at most
``max_clips_per_source`` clips spread over its whole length (video_source.py states the positions,
crop/resize and memory policy). A ``.npy`` array of shape (N, T, H, W, 3) uint8 is taken as N clips
as is, in time order; any other (F, h, w, 3) uint8 array is treated like a video's frames
(memory-mapped). A ``.npz`` contributes each of its arrays that way, as separate sources. Each
source records the short side of the video its clips stand for (``Dataset.source_sides``).
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import numpy as np

from codecloop_server import video_source
from codecloop_server.corpus import DEFAULT_CLIP_SHAPE, DEFAULT_MAX_CLIPS_PER_SOURCE, VIDEO_SUFFIXES, Dataset, check_max_clips_per_source, log
from codecloop_wire.errors import CodecLoopValueError


def _array_clips(arr: np.ndarray, where: str, t: int, h: int, w: int, max_clips: int, policy: video_source.CarrierPolicy) -> np.ndarray:
    if arr.dtype != np.uint8 or arr.ndim not in (4, 5) or arr.shape[-1] != 3:
        raise CodecLoopValueError(
            f"dataset file {where}: expected uint8 (N, T, H, W, 3) clips or (F, H, W, 3) frames, "
            f"got {arr.dtype} {arr.shape}"
        )
    if 0 in arr.shape:
        raise CodecLoopValueError(f"dataset file {where}: shape {arr.shape} has a zero-length axis; no clip can be taken from it")
    if arr.ndim == 5:
        if arr.shape[1:4] != (t, h, w):
            raise CodecLoopValueError(f"dataset file {where}: clips {arr.shape[1:4]} but the dataset is {t, h, w}")
        return np.asarray(arr)
    return video_source.array_clips(arr, t, h, w, max_clips, policy)


def _first_clip_array_shape(files: list[Path]) -> tuple[int, int, int] | None:
    for path in (p for p in files if p.name.endswith(".npy")):
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, EOFError, ValueError):
            continue  # an unreadable file: skipped with its reason when the folder is read
        if arr.ndim == 5:
            return tuple(arr.shape[1:4])  # type: ignore[return-value]
    return None


def _regular_files(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The folder's regular files (links followed), sorted, and (name, reason) of what is not one: a
    FIFO or a device named ``x.mp4`` would block the open forever (start-up must stay interruptible)."""
    files, skipped = [], []
    for path in sorted(folder.iterdir()):
        try:
            mode = path.stat().st_mode
        except OSError as err:  # e.g. a dangling link
            skipped.append((path.name, f"unreadable ({err.strerror or err})"))
            continue
        if stat.S_ISREG(mode):
            files.append(path)
        elif not stat.S_ISDIR(mode):
            skipped.append((path.name, "not a regular file (a FIFO, socket or device)"))
    return files, skipped


def _array_side(arr: np.ndarray, policy: video_source.CarrierPolicy) -> int:
    """The source side of an array file: a frame array is a video; (N, T, H, W, 3) clips stand for themselves."""
    return policy.source_side(arr.shape[1], arr.shape[2]) if arr.ndim == 4 else min(arr.shape[2], arr.shape[3])


def _file_clips(path: Path, t: int, h: int, w: int, max_clips: int, policy: video_source.CarrierPolicy) -> list[tuple[str, np.ndarray, int]]:
    """(source name, clips, source side) of one folder file; [] for a file that is no dataset file (by suffix)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
        return [(path.name, _array_clips(arr, str(path), t, h, w, max_clips, policy), _array_side(arr, policy))]
    if suffix == ".npz":
        with np.load(path) as z:
            return [(f"{path.name}[{k}]", _array_clips(z[k], f"{path}[{k}]", t, h, w, max_clips, policy), _array_side(z[k], policy)) for k in sorted(z.files)]
    if suffix in VIDEO_SUFFIXES:
        return [(path.name, video_source.video_clips(path, t, h, w, max_clips, policy), policy.source_side(*video_source.frame_size(path)))]
    return []


def _unreadable(err: Exception, path: Path) -> str:
    """Why ``path`` could not be read, in one line, without repeating its path (it is named beside it)."""
    import av

    text = (str(err).splitlines() or [type(err).__name__])[0]
    for named in (f"dataset file {path}: ", f": '{path}'", f"dataset file {path}"):
        text = text.replace(named, "")
    return f"unreadable ({text})" if isinstance(err, (av.FFmpegError, OSError, EOFError, zipfile.BadZipFile)) else text


def folder_dataset(
    name: str,
    folder: str | Path,
    clip_shape: tuple[int, int, int] | None = None,
    max_clips_per_source: int = DEFAULT_MAX_CLIPS_PER_SOURCE,
    policy: video_source.CarrierPolicy = video_source.RESIZE,
    strict: bool = False,
) -> Dataset:
    """Load every video / ``.npy`` / ``.npz`` file of ``folder`` (not recursive) as clips.

    ``clip_shape`` (T, H, W) defaults to the clip shape of the first (N, T, H, W, 3) ``.npy`` in the
    folder, else to ``DEFAULT_CLIP_SHAPE``. A video or frame array gives at most
    ``max_clips_per_source`` clips; (N, T, H, W, 3) clip arrays are taken whole. ``policy``: how a
    video's or frame array's frames become clip frames (video_source.CarrierPolicy). A file that
    cannot be read, or gives no clip (shorter than T frames, or under a native policy smaller than
    H x W), is skipped with a warning and its reason (``Dataset.skipped``); with ``strict`` it is
    refused (CodecLoopValueError naming the file).
    """
    import av

    folder = Path(folder)
    if not folder.is_dir():
        raise CodecLoopValueError(f"dataset {name}: {folder} is not a directory")
    check_max_clips_per_source(max_clips_per_source)
    files, skipped = _regular_files(folder)
    t, h, w = clip_shape or _first_clip_array_shape(files) or DEFAULT_CLIP_SHAPE
    if h % 2 or w % 2:
        raise CodecLoopValueError(f"dataset {name}: H and W must be even for yuv420p, got {h}x{w}")
    sources: list[tuple[str, np.ndarray, int]] = []
    for path in files:
        try:
            found = _file_clips(path, t, h, w, max_clips_per_source, policy)
        except (CodecLoopValueError, av.FFmpegError, OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
            found = []
            skipped.append((path.name, _unreadable(err, path)))
        for source, clips, side in found:
            if len(clips):
                sources.append((source, clips, side))
            else:  # a file shorter than one clip (or, native, smaller than a clip) is no source
                small = "" if policy.name == "resize" else f", or smaller than {h}x{w} ({policy.name} carriers)"
                skipped.append((source, f"too short: fewer than {t} frames (one clip){small}"))
    for source, why in skipped:
        if strict:
            raise CodecLoopValueError(f"dataset {name}: file {folder / source}: {why} (served without --strict-datasets, it is skipped)")
        log.warning("dataset %s: skipped %s: %s", name, folder / source, why)
    log.info("dataset %s: clips per source %s", name, {n: len(c) for n, c, _ in sources})
    if not sources:
        raise CodecLoopValueError(f"dataset {name}: no clip of {t} frames found in {folder}" + "".join(f"; skipped {n}: {why}" for n, why in skipped))
    return Dataset(
        name=name,
        clips=np.concatenate([c for _, c, _ in sources]),
        sources=tuple(n for n, _, _ in sources),
        source_of_clip=np.concatenate([np.full(len(c), i) for i, (_, c, _) in enumerate(sources)]),
        source_sides=tuple(side for _, _, side in sources),
        description=str(folder),
        skipped=tuple(skipped),
        folder=str(folder.resolve()),
        carrier_policy=policy.describe(h, w),
    )
