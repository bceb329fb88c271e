"""Clips from one video file or frame array, streamed: bounded memory, clips spread over the whole length.

Policy (the README's "Carriers" section states the same):

- Positions: a source of F frames gives n = min(max_clips, F // T) clips of T frames. The F frames
  are cut into n equal parts and clip k is the T frames centred in part k (:func:`clip_starts`), so
  the clips sample the whole video, never overlap, and a longer video gives more distant clips
  rather than only its first minutes.
- Frames: a video is decoded in order, one frame at a time; only frames inside a wanted clip are
  converted to rgb24 and fitted, the others are dropped as soon as they are decoded. A frame array
  (``.npy``, read memory-mapped) is indexed the same way.
- Fit (:func:`fit_frame`): centre-crop to the H:W aspect ratio (the largest centred window), then
  resize to H x W with ``skimage.transform.resize(order=1, anti_aliasing=True)``: bilinear
  interpolation after a Gaussian pre-filter of sigma = (scale - 1) / 2 per axis; rounded to uint8.
- Memory: the output clips (n x T x H x W x 3 bytes) plus one decoded frame, its rgb24 copy and the
  float buffers of fitting it (about 50 bytes per pixel of the crop), plus the decoder's reference
  frames; never the whole video. tests/test_corpus.py measures the peak RSS of a 10-minute 720p video.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from codecloop_wire.errors import CodecLoopValueError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".h264", ".264", ".y4m")


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
    from skimage import transform

    fh, fw = frame.shape[:2]
    if fh * w > fw * h:  # too tall
        ch, cw = fw * h // w, fw
    else:
        ch, cw = fh, fh * w // h
    y0, x0 = (fh - ch) // 2, (fw - cw) // 2
    crop = frame[y0 : y0 + ch, x0 : x0 + cw]
    if crop.shape[:2] == (h, w):
        return np.array(crop)  # a copy: never a view into a decoder buffer or a memory map
    out = transform.resize(crop.astype(np.float32) / 255.0, (h, w, 3), anti_aliasing=True, order=1)
    return np.floor(np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def _wanted(starts: np.ndarray, t: int) -> dict[int, tuple[int, int]]:
    """Frame index -> (clip, frame within the clip)."""
    return {int(s) + j: (k, j) for k, s in enumerate(starts) for j in range(t)}


def array_clips(frames: np.ndarray, t: int, h: int, w: int, max_clips: int) -> np.ndarray:
    """Clips uint8 (n, t, h, w, 3) of a uint8 (F, h', w', 3) frame array (memory-mapped is fine: only
    the frames of the chosen clips are read)."""
    starts = clip_starts(len(frames), t, max_clips)
    out = np.empty((len(starts), t, h, w, 3), np.uint8)
    for i, (k, j) in _wanted(starts, t).items():
        out[k, j] = fit_frame(np.asarray(frames[i]), h, w)
    return out


def count_frames(path: Path) -> int:
    """Frames of the first video stream (CodecLoopValueError naming the file when it has none): its packets, counted by demuxing without decoding (a 10-minute
    file takes well under a second; container headers' frame counts are missing for many formats)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:  # audio only, or no stream at all
            n = len(container.streams)
            raise CodecLoopValueError(f"dataset file {path}: no video stream ({n} other stream{'s' * (n != 1)})")
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def video_clips(path: Path, t: int, h: int, w: int, max_clips: int) -> np.ndarray:
    """Clips uint8 (n, t, h, w, 3) of a video file, decoded as a stream (module policy).

    Clips whose frames the decoder did not deliver (fewer decoded frames than packets) are dropped.
    """
    import av

    starts = clip_starts(count_frames(path), t, max_clips)
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
                    out[slot] = fit_frame(frame.to_ndarray(format="rgb24"), h, w)
                if i >= last:
                    break
    return out[starts + t <= decoded]
