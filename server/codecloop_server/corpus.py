"""Carrier datasets: fixed-size uint8 clips with a deterministic train/holdout split.

A dataset is either the embedded corpus (camera pans and zooms over the photographs that
scikit-image ships, generated at first use and cached) or a folder of videos / ``.npy`` / ``.npz``
arrays. Every clip is uint8 RGB of shape (T, H, W, 3).

Folder datasets: files are read in sorted order. A video (anything PyAV decodes) is decoded to
rgb24, each frame centre-cropped to the H:W aspect ratio and resized to H x W with
``skimage.transform.resize(anti_aliasing=True)``, then cut into consecutive non-overlapping
T-frame clips (a remainder shorter than T is dropped). A ``.npy`` array of shape (N, T, H, W, 3)
uint8 is taken as N clips as is; any other (F, h, w, 3) uint8 array is treated like a video's
frames. A ``.npz`` contributes each of its arrays that way, as separate sources.

Split: sources (files, or photographs for the embedded corpus) in sorted order; source k goes to
``holdout`` when k % 4 == 3, else to ``train``. With fewer than 4 sources the split is by clip
instead (clip i to ``holdout`` when i % 4 == 3).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from codecloop.errors import CodecLoopValueError

SPLITS = ("train", "holdout")
DEFAULT_CLIP_SHAPE = (16, 112, 112)
EMBEDDED_NAME = "embedded"
_EMBEDDED_VERSION = 1
# Real photographs bundled in scikit-image's wheel (no download). PNG only: PNG decoding is exact
# everywhere, JPEG decoders differ by library version. Greyscale ones become grey RGB.
_EMBEDDED_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock_motion", "coffee", "coins", "grass",
    "gravel", "ihc", "moon", "motorcycle_left", "motorcycle_right",
)  # fmt: skip
_EMBEDDED_CLIPS_PER_PHOTO = 24
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".h264", ".264", ".y4m")


@dataclass
class Dataset:
    """Clips in memory plus their split.

    Attributes:
        name: the name clients use.
        clips: uint8 (N, T, H, W, 3).
        splits: split name -> sorted int64 clip indices.
        digest: sha256 of the clip bytes (first 16 hex digits), so users can check two servers agree.
    """

    name: str
    clips: np.ndarray
    splits: dict[str, np.ndarray]
    description: str = ""
    digest: str = field(default="")

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = hashlib.sha256(self.clips.tobytes()).hexdigest()[:16]

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        """(T, H, W) of every clip."""
        return tuple(self.clips.shape[1:4])  # type: ignore[return-value]

    def select(self, split: str, num_clips: int, seed: int) -> np.ndarray:
        """Indices of ``num_clips`` clips drawn without replacement from ``split`` (sorted).

        The draw is ``numpy.random.default_rng(seed).choice(len(split), num_clips, replace=False)``;
        asking for the whole split returns it in order whatever the seed.
        """
        if split not in self.splits:
            raise CodecLoopValueError(f"carriers.split: unknown split {split!r}; allowed: {sorted(self.splits)}")
        pool = self.splits[split]
        if not 1 <= num_clips <= len(pool):
            raise CodecLoopValueError(
                f"carriers.num_clips: {num_clips} is outside the allowed range [1, {len(pool)}] "
                f"for dataset {self.name!r} split {split!r}"
            )
        if num_clips == len(pool):
            return pool.copy()
        pick = np.random.default_rng(seed).choice(len(pool), num_clips, replace=False)
        return np.sort(pool[pick])


def split_by_source(source_of_clip: np.ndarray, num_sources: int) -> dict[str, np.ndarray]:
    """The documented split rule (module docstring) from each clip's source index."""
    clip_ids = np.arange(len(source_of_clip))
    key = source_of_clip if num_sources >= 4 else clip_ids
    holdout = key % 4 == 3
    return {"train": clip_ids[~holdout], "holdout": clip_ids[holdout]}


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


def cache_dir() -> Path:
    """``$CODECLOOP_CACHE_DIR``, else ``$XDG_CACHE_HOME/codecloop``, else ``~/.cache/codecloop``."""
    env = os.environ.get("CODECLOOP_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "codecloop"


def embedded_corpus(clip_shape: tuple[int, int, int] = DEFAULT_CLIP_SHAPE) -> Dataset:
    """The embedded corpus: 13 photographs x 24 clips of (T, H, W) with pans and zooms.

    Generated deterministically (seed = photo index) on first use and cached as ``.npy`` under
    :func:`cache_dir`. 10 photographs (240 clips) are ``train``, 3 (72 clips) ``holdout``.
    """
    t, h, w = clip_shape
    stem = f"embedded-v{_EMBEDDED_VERSION}-{t}x{h}x{w}"
    path = cache_dir() / f"{stem}.npy"
    if path.exists():
        clips = np.load(path, mmap_mode=None)
    else:
        parts = []
        for i, name in enumerate(_EMBEDDED_PHOTOS):
            img = _photo(name)
            rng = np.random.default_rng(i)
            parts.extend(_camera_clip(img, rng, t, h, w) for _ in range(_EMBEDDED_CLIPS_PER_PHOTO))
        clips = np.stack(parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, clips)
        os.replace(tmp, path)  # atomic: concurrent first starts never read a half-written file
        (path.parent / f"{stem}.json").write_text(json.dumps({"photos": _EMBEDDED_PHOTOS}))
    source = np.repeat(np.arange(len(_EMBEDDED_PHOTOS)), _EMBEDDED_CLIPS_PER_PHOTO)
    return Dataset(
        name=EMBEDDED_NAME,
        clips=clips,
        splits=split_by_source(source, len(_EMBEDDED_PHOTOS)),
        description="pans and zooms over 13 scikit-image photographs",
    )


# --- folder datasets -----------------------------------------------------------------------------


def _fit_frame(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre-crop an (h', w', 3) uint8 frame to the h:w aspect, then resize to (h, w, 3) uint8."""
    from skimage import transform

    fh, fw = frame.shape[:2]
    if fh * w > fw * h:  # too tall
        ch, cw = fw * h // w, fw
    else:
        ch, cw = fh, fh * w // h
    y0, x0 = (fh - ch) // 2, (fw - cw) // 2
    crop = frame[y0 : y0 + ch, x0 : x0 + cw]
    if crop.shape[:2] == (h, w):
        return crop
    out = transform.resize(crop.astype(np.float32) / 255.0, (h, w, 3), anti_aliasing=True, order=1)
    return np.floor(np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def _frames_to_clips(frames: np.ndarray | list[np.ndarray], t: int, h: int, w: int) -> list[np.ndarray]:
    fitted = [_fit_frame(np.asarray(f), h, w) for f in frames]
    return [np.stack(fitted[i : i + t]) for i in range(0, len(fitted) - t + 1, t)]


def _array_clips(arr: np.ndarray, where: str, t: int, h: int, w: int) -> list[np.ndarray]:
    if arr.dtype != np.uint8 or arr.ndim not in (4, 5) or arr.shape[-1] != 3:
        raise CodecLoopValueError(
            f"dataset file {where}: expected uint8 (N, T, H, W, 3) clips or (F, H, W, 3) frames, "
            f"got {arr.dtype} {arr.shape}"
        )
    if arr.ndim == 5:
        if arr.shape[1:4] != (t, h, w):
            raise CodecLoopValueError(f"dataset file {where}: clips {arr.shape[1:4]} but the dataset is {t, h, w}")
        return list(arr)
    return _frames_to_clips(arr, t, h, w)


def _video_clips(path: Path, t: int, h: int, w: int) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return _frames_to_clips(frames, t, h, w)


def _first_clip_array_shape(folder: Path) -> tuple[int, int, int] | None:
    for path in sorted(folder.glob("*.npy")):
        arr = np.load(path, mmap_mode="r")
        if arr.ndim == 5:
            return tuple(arr.shape[1:4])  # type: ignore[return-value]
    return None


def folder_dataset(name: str, folder: str | Path, clip_shape: tuple[int, int, int] | None = None) -> Dataset:
    """Load every video / ``.npy`` / ``.npz`` file of ``folder`` (not recursive) as clips.

    ``clip_shape`` (T, H, W) defaults to the clip shape of the first (N, T, H, W, 3) ``.npy`` in the
    folder, else to ``DEFAULT_CLIP_SHAPE``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CodecLoopValueError(f"dataset {name}: {folder} is not a directory")
    t, h, w = clip_shape or _first_clip_array_shape(folder) or DEFAULT_CLIP_SHAPE
    if h % 2 or w % 2:
        raise CodecLoopValueError(f"dataset {name}: H and W must be even for yuv420p, got {h}x{w}")
    sources: list[list[np.ndarray]] = []
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if suffix == ".npy":
            sources.append(_array_clips(np.load(path), str(path), t, h, w))
        elif suffix == ".npz":
            with np.load(path) as z:
                sources.extend(_array_clips(z[k], f"{path}[{k}]", t, h, w) for k in sorted(z.files))
        elif suffix in VIDEO_SUFFIXES:
            sources.append(_video_clips(path, t, h, w))
    sources = [s for s in sources if s]
    if not sources:
        raise CodecLoopValueError(f"dataset {name}: no clip of {t} frames found in {folder}")
    source = np.concatenate([np.full(len(s), i) for i, s in enumerate(sources)])
    clips = np.stack([c for s in sources for c in s])
    return Dataset(name=name, clips=clips, splits=split_by_source(source, len(sources)), description=str(folder))
