"""Clips from one video file or frame array, streamed: bounded memory, clips spread over the whole length.

Policy (the README's "Carriers" section states the same):

- Positions: a source of F frames gives n = min(max_clips, F // T) clips of T frames. The F frames
  are cut into n equal parts and clip k is the T frames centred in part k (:func:`clip_starts`), so
  the clips sample the whole video, never overlap, and a longer video gives more distant clips
  rather than only its first minutes.
- Frames: a video is decoded in order, one frame at a time; only frames inside a wanted clip are
  converted to rgb24 and fitted, the others are dropped as soon as they are decoded. A frame array
  (``.npy``, read memory-mapped) is indexed the same way.
- Fit (:class:`CarrierPolicy`, ``--carriers``): ``resize`` (the default, :func:`fit_frame`): centre-crop
  to the H:W aspect ratio (the largest centred window), then resize to H x W with
  ``skimage.transform.resize(order=1, anti_aliasing=True)``: bilinear interpolation after a Gaussian
  pre-filter of sigma = (scale - 1) / 2 per axis; rounded to uint8. ``native`` / ``native:L``: an
  H x W crop at the video's own pixel scale (after scaling to at most L lines).
- Memory: the output clips (n x T x H x W x 3 bytes) plus one decoded frame, its rgb24 copy and the
  float buffers of fitting it (about 50 bytes per pixel of the crop), plus the decoder's reference
  frames; never the whole video. tests/test_corpus.py measures the peak RSS of a 10-minute 720p video.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codecloop_wire.errors import CodecLoopValueError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".h264", ".264", ".y4m")
_R2 = (0.7548776662466927, 0.5698402909980532)  # the R2 low-discrepancy sequence's steps (rows, columns)


@dataclass(frozen=True)
class CarrierPolicy:
    """How a source frame becomes an H x W carrier frame (``--carriers`` of ``codecloop serve``).

    - ``resize`` (:func:`fit_frame`): centre-crop to the H:W aspect, resize the window to H x W. A
      carrier pixel is then 3 - 10 pixels of a typical video: a signature's pixel scale on the
      carriers is not its scale on the video it will mark.
    - ``native``: an H x W crop at the video's own resolution: one carrier pixel is one video pixel,
      as when ``codecloop mark`` tiles the signature over the video (codecloop_wire.deploy).
    - ``native:L`` (e.g. ``native:720``): the same after scaling frames taller than L lines down to
      L lines (aspect kept, width rounded to even; :func:`fit_frame`'s filter), as a platform that
      ingests at L lines would; shorter frames are never scaled up.

    Native crops: clip k of a source (k = 0, 1, ... in time order) is cut at row
    floor(frac(0.5 + k * 0.75488) * (H' - H + 1)) and column floor(frac(0.5 + k * 0.56984) * (W' - W + 1))
    of the H' x W' frame (the R2 sequence: spread over the frame, the first clip at the centre),
    the same window for all T frames of the clip. A source smaller than H x W gives no clip.
    """

    name: str = "resize"
    lines: int | None = None

    @classmethod
    def parse(cls, text: str) -> CarrierPolicy:
        """``resize``, ``native`` or ``native:L`` (L >= 2 lines) -> the policy; CodecLoopValueError naming the setting."""
        mode, sep, lines = text.partition(":")
        if mode in ("resize", "native") and not sep:
            return cls(mode)
        if mode == "native" and lines.isdigit() and int(lines) >= 2:
            return cls("native", int(lines))
        raise CodecLoopValueError(f"carriers: {text!r}; allowed: resize, native, native:L (scale to at most L >= 2 lines, then crop)")

    def __str__(self) -> str:
        return self.name if self.lines is None else f"{self.name}:{self.lines}"

    def describe(self, h: int, w: int) -> str:
        """The policy in words, for GetServerInfo."""
        if self.name == "resize":
            return f"resize: each frame centre-cropped to the {h}:{w} aspect and resized to {w}x{h}"
        first = f"frames taller than {self.lines} lines scaled down to {self.lines} lines, then " if self.lines else ""
        return f"native: {first}a {w}x{h} crop at the video's own pixel scale (one carrier pixel = one video pixel), R2-spread per clip"

    def ingest_size(self, fh: int, fw: int) -> tuple[int, int]:
        """(H', W') of a source frame of fh x fw after the ingest scale."""
        if self.lines is None or fh <= self.lines:
            return fh, fw
        return self.lines, max(2, 2 * round(fw * self.lines / fh / 2))

    def source_side(self, fh: int, fw: int) -> int:
        """The short side in pixels of the video a clip of a fh x fw source stands for: the source
        after the ingest scale (channels.Resize(max_short_side) reads it)."""
        return min(self.ingest_size(fh, fw))

    def fits(self, fh: int, fw: int, h: int, w: int) -> bool:
        """Whether a fh x fw source frame can give H x W carriers."""
        ih, iw = self.ingest_size(fh, fw)
        return self.name == "resize" or (ih >= h and iw >= w)

    def fit(self, frame: np.ndarray, h: int, w: int, clip: int) -> np.ndarray:
        """uint8 (h', w', 3) source frame of clip number ``clip`` -> uint8 (h, w, 3) carrier frame (a copy)."""
        if self.name == "resize":
            return fit_frame(frame, h, w)
        ih, iw = self.ingest_size(*frame.shape[:2])
        if (ih, iw) != frame.shape[:2]:
            frame = _resize(frame, ih, iw)
        y0 = int((0.5 + clip * _R2[0]) % 1.0 * (ih - h + 1))
        x0 = int((0.5 + clip * _R2[1]) % 1.0 * (iw - w + 1))
        return np.array(frame[y0 : y0 + h, x0 : x0 + w])


RESIZE = CarrierPolicy()


def clip_starts(num_frames: int, t: int, max_clips: int) -> np.ndarray:
    """First-frame indices (int64, increasing) of the clips taken from ``num_frames`` frames.

    n = min(max_clips, num_frames // t); clip k starts at floor(k F / n + (F / n - t) / 2), computed in
    integers. Each part is F / n >= t frames long, so clip k lies inside part k: no two clips overlap.
    """
    n = min(max_clips, num_frames // t)
    k = np.arange(n, dtype=np.int64)
    return (2 * k * num_frames + num_frames - n * t) // max(2 * n, 1)


def fit_frame(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre-crop an (h', w', 3) uint8 frame to the h:w aspect, then resize to (h, w, 3) uint8 (module policy)."""
    fh, fw = frame.shape[:2]
    if fh * w > fw * h:  # too tall
        ch, cw = fw * h // w, fw
    else:
        ch, cw = fh, fh * w // h
    y0, x0 = (fh - ch) // 2, (fw - cw) // 2
    crop = frame[y0 : y0 + ch, x0 : x0 + cw]
    if crop.shape[:2] == (h, w):
        return np.array(crop)  # a copy: never a view into a decoder buffer or a memory map
    return _resize(crop, h, w)


def _resize(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 (h', w', 3) -> (h, w, 3): bilinear after a Gaussian anti-aliasing pre-filter (module policy)."""
    from skimage import transform

    out = transform.resize(frame.astype(np.float32) / 255.0, (h, w, 3), anti_aliasing=True, order=1)
    return np.floor(np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def _wanted(starts: np.ndarray, t: int) -> dict[int, tuple[int, int]]:
    """Frame index -> (clip, frame within the clip)."""
    return {int(s) + j: (k, j) for k, s in enumerate(starts) for j in range(t)}


def array_clips(frames: np.ndarray, t: int, h: int, w: int, max_clips: int, policy: CarrierPolicy = RESIZE) -> np.ndarray:
    """Clips uint8 (n, t, h, w, 3) of a uint8 (F, h', w', 3) frame array (memory-mapped is fine: only
    the frames of the chosen clips are read)."""
    fits = policy.fits(frames.shape[1], frames.shape[2], h, w)
    starts = clip_starts(len(frames), t, max_clips) if fits else np.zeros(0, np.int64)
    out = np.empty((len(starts), t, h, w, 3), np.uint8)
    for i, (k, j) in _wanted(starts, t).items():
        out[k, j] = policy.fit(np.asarray(frames[i]), h, w, k)
    return out


def video_stream(container: Any, path: Path) -> Any:
    """The first video stream of an open PyAV container; CodecLoopValueError naming the file when
    it has none (audio only, or no stream at all)."""
    if not container.streams.video:
        n = len(container.streams)
        raise CodecLoopValueError(f"dataset file {path}: no video stream ({n} other stream{'s' * (n != 1)})")
    return container.streams.video[0]


def count_frames(path: Path) -> int:
    """Frames of the first video stream (:func:`video_stream`): its packets, counted by demuxing
    without decoding (a 10-minute file takes well under a second; container headers' frame counts
    are missing for many formats)."""
    import av

    with av.open(str(path)) as container:
        stream = video_stream(container, path)
        return sum(1 for packet in container.demux(stream) if packet.size)


def frame_size(path: Path) -> tuple[int, int]:
    """(height, width) of the first video stream's frames, from its header (no decode)."""
    import av

    with av.open(str(path)) as container:
        ctx = video_stream(container, path).codec_context
        return ctx.height, ctx.width


def video_clips(path: Path, t: int, h: int, w: int, max_clips: int, policy: CarrierPolicy = RESIZE) -> np.ndarray:
    """Clips uint8 (n, t, h, w, 3) of a video file, decoded as a stream (module policy).

    Clips whose frames the decoder did not deliver (fewer decoded frames than packets) are dropped;
    a video too small for ``policy`` gives none.
    """
    import av

    with av.open(str(path)) as container:
        ctx = video_stream(container, path).codec_context
        fits = policy.fits(ctx.height, ctx.width, h, w)
    starts = clip_starts(count_frames(path), t, max_clips) if fits else np.zeros(0, np.int64)
    out = np.empty((len(starts), t, h, w, 3), np.uint8)
    wanted = _wanted(starts, t)
    last = max(wanted, default=-1)
    decoded = 0
    if wanted:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame/slice threads: a few frames in flight, not the video
            for i, frame in enumerate(container.decode(stream)):
                decoded = i + 1
                slot = wanted.get(i)
                if slot is not None:
                    out[slot] = policy.fit(frame.to_ndarray(format="rgb24"), h, w, slot[0])
                if i >= last:
                    break
    return out[starts + t <= decoded]
