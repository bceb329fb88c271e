"""Whole-video detection with a detector the server serves (``codecloop detect --detector NAME``).

The video is decoded frame by frame (codecloop.detect.decoded_frames: the same ``size``, ``fps``
and ``max_frames`` as the blind path) and cut into the detector's clips by the deployment rule
(codecloop_wire.deploy): a clip is a (T, h, w) window of the tile grid, frames kT .. kT + T - 1 of the
video (the time cycle) and rows ih .. ih + h - 1, columns jw .. jw + w - 1 (the tiles from pixel
(0, 0)), so each clip carries the signature exactly as the carriers it was made on did (frame 0 of
the clip on signature frame 0, pixel (0, 0) on signature pixel (0, 0)). Partial tiles on the right
and bottom, and a last cycle of fewer than T frames, are left out.

The clips go to the server in chunks (``Client.score_clips``: under the message limit, the server's
``max_clips`` and ``max_work_pixels``, and :data:`CHUNK_BYTES`), one chunk scored while the next is
cut. The server scores each clip with the detector and places it in its empirical null (the key
moved to 16 lattice shifts, codecloop_wire.null.EMPIRICAL_NULL_MODEL). One video, one statistic:

* ``z``: Stouffer's combination of the clips' z (docs/statistics.md, "per video"); a clip whose null
  scores do not vary at all (a flat clip, e.g. black bars: z = -inf) carries no evidence and is left
  out; ``p_value`` = P(N(0, 1) >= z); ``marked``: p < ``fpr``.
* ``score``: the mean of the clips' detector scores.

Memory: one cycle of T frames as clips, the chunk being cut and the chunk in flight, whatever the
video's length.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codecloop.client import Client
from codecloop.detect import Detection, decoded_frames
from codecloop.results import ClipScores
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.null import EMPIRICAL_SHIFTS, p_of_z, stouffer

CHUNK_BYTES = 32 << 20  # clip bytes per ScoreClips call at most (also under the message limit)
_HEADROOM = 1 << 20  # message bytes kept for the key and the framing


@dataclass(frozen=True)
class Plan:
    """How one signature is detected with one served detector: the client, the detector's clip shape
    (T, h, w) the signature fits, and the clips per call."""

    client: Client
    detector: str
    signature: np.ndarray  # float32 (T or 1, h, w, 3)
    clip_shape: tuple[int, int, int]
    chunk_clips: int


def plan(client: Client, detector: str, signature: np.ndarray) -> Plan:
    """The :class:`Plan` of ``signature`` (checked, float32 (T, h, w, 3)) on ``detector`` of ``client``'s
    server. CodecLoopValueError naming ``detector`` when the server does not serve it or it takes no key
    (no null model, so no p-value), or ``signature`` when its tile fits none of the detector's clip shapes."""
    info = client.info()
    served = {s.name: s for s in info.scorers if s.clip_shapes}
    if detector not in served:
        raise CodecLoopValueError(f"detector: {detector!r} is not a detector the server at {client.target} serves; it serves: {sorted(served) or 'none'}")
    found = served[detector]
    if not found.null_model:
        keyed = sorted(n for n, s in served.items() if s.null_model)
        raise CodecLoopValueError(
            f"detector: {detector!r} takes clips only, no key: it has no null model, so a video gets no p-value; "
            f"use a detector that takes the key (served: {keyed or 'none'})"
        )
    t, h, w, _ = signature.shape
    fits = [c for c in found.clip_shapes if c[1:] == (h, w) and t in (1, c[0])]
    if not fits:
        shapes = [list(c) for c in found.clip_shapes]
        raise CodecLoopValueError(
            f"signature: a ({t}, {h}, {w}) tile fits none of the clip shapes (T, H, W) of detector {detector!r}: {shapes}; "
            "its H x W must be a clip's and its T the clip's or 1"
        )
    shape = fits[0]
    clip_bytes = shape[0] * shape[1] * shape[2] * 3
    limits = info.limits
    by_message = (min(client.max_message_bytes, limits.max_message_bytes) - signature.nbytes - _HEADROOM) // clip_bytes
    by_work = limits.max_work_pixels // ((1 + EMPIRICAL_SHIFTS) * shape[0] * shape[1] * shape[2])
    chunk = max(1, min(limits.max_clips, by_message, by_work, CHUNK_BYTES // clip_bytes))
    return Plan(client, detector, signature, shape, chunk)


class ClipCutter:
    """Cuts a video's frames into the (T, h, w) clips of the deployment rule's grid (module docstring).

    :meth:`add` takes each frame with its index in the marked video and returns the clips of a cycle
    once the next cycle begins; :meth:`flush` returns the last one. A cycle missing a frame (a
    platform dropped it: ``fps`` placement) gives no clip; a frame of an earlier cycle is ignored.
    """

    def __init__(self, frames: int, height: int, width: int) -> None:
        self.t, self.h, self.w = frames, height, width
        self.cycle = -1
        self.frame_shape: tuple[int, ...] | None = None
        self._clips: np.ndarray | None = None  # uint8 (tiles, T, h, w, 3) of the current cycle
        self._filled = np.zeros(frames, bool)

    def add(self, index: int, frame: np.ndarray) -> np.ndarray | None:
        """Add uint8 ``frame`` (H, W, 3), video frame ``index``; the previous cycle's clips when this
        frame begins a new cycle (uint8 (n, T, h, w, 3); None when that cycle gave none)."""
        cycle, pos = divmod(index, self.t)
        if cycle < self.cycle:
            return None
        if self.frame_shape is not None and frame.shape != self.frame_shape:
            was = f"{self.frame_shape[1]}x{self.frame_shape[0]}"
            raise CodecLoopValueError(f"frame {index}: {frame.shape[1]}x{frame.shape[0]} after frames of {was}; give --size (size=) to scale every frame to one size")
        self.frame_shape = frame.shape
        done = None
        if cycle != self.cycle:
            done = self.flush()
            rows, cols = frame.shape[0] // self.h, frame.shape[1] // self.w
            self.cycle, self._clips = cycle, np.empty((rows * cols, self.t, self.h, self.w, 3), np.uint8)
            self._filled[:] = False
        assert self._clips is not None
        rows, cols = frame.shape[0] // self.h, frame.shape[1] // self.w
        grid = frame[: rows * self.h, : cols * self.w].reshape(rows, self.h, cols, self.w, 3)
        self._clips[:, pos] = grid.transpose(0, 2, 1, 3, 4).reshape(-1, self.h, self.w, 3)
        self._filled[pos] = True
        return done

    def flush(self) -> np.ndarray | None:
        """The current cycle's clips if all of its frames came, else None; the cycle is closed."""
        clips, self._clips = self._clips, None
        return clips if clips is not None and self._filled.all() else None


def detect(
    path: str | Path, how: Plan, *, fpr: float, size: tuple[int, int] | None = None, max_frames: int | None = None, fps: float | None = None
) -> Detection:
    """One video's :class:`codecloop.detect.Detection` by ``how`` (module docstring); the options as
    :func:`codecloop.detect.detect_video` checks them. CodecLoopValueError naming the file when it
    cannot be decoded, its frames are smaller than the tile, or it gives no full clip."""
    src = Path(path)
    t, h, w = how.clip_shape
    cutter = ClipCutter(t, h, w)
    scored: list[ClipScores] = []
    pending: list[np.ndarray] = []
    frames, width, height = 0, 0, 0
    with ThreadPoolExecutor(1, thread_name_prefix="score-clips") as pool:
        inflight: Future[ClipScores] | None = None

        def send(final: bool) -> None:
            nonlocal pending, inflight
            held = sum(len(c) for c in pending)
            while held >= how.chunk_clips or (final and held):
                clips = np.concatenate(pending) if len(pending) > 1 else pending[0]
                chunk, rest = clips[: how.chunk_clips], clips[how.chunk_clips :]
                pending, held = ([rest] if len(rest) else []), len(rest)
                if inflight is not None:
                    scored.append(inflight.result())  # at most one chunk in flight: bounded memory
                inflight = pool.submit(how.client.score_clips, how.detector, chunk, how.signature)

        for index, x in decoded_frames(src, size, max_frames, fps):
            height, width = x.shape[:2]
            if height < h or width < w:
                raise CodecLoopValueError(f"{str(src)!r}: frames of {width}x{height} are smaller than the {w}x{h} signature tile")
            done = cutter.add(index, x)
            frames += 1
            if done is not None:
                pending.append(done)
                send(False)
        last = cutter.flush()
        if last is not None:
            pending.append(last)
        send(True)
        if inflight is not None:
            scored.append(inflight.result())
    if not scored:
        raise CodecLoopValueError(f"{str(src)!r}: no full clip: detector {how.detector!r} needs {t} frames of at least {w}x{h} (got {frames} frames of {width}x{height})")
    scores = np.concatenate([s.scores for s in scored])
    z_all = np.concatenate([s.z for s in scored if s.z is not None])
    z = _combined(z_all)
    p = p_of_z(z)
    return Detection(
        path=str(src), score=float(scores.mean()), z=z, p_value=p, marked=bool(p < fpr), fpr=fpr, frames=frames, width=width, height=height,
        detector=how.detector, clips=len(scores),
    )  # fmt: skip


def _combined(z: np.ndarray) -> float:
    """Stouffer's z of the clips that carry evidence (z = -inf: a null without spread, left out); -inf
    (p = 1) when none does."""
    used = z[z > -math.inf]
    return stouffer(used) if used.size else -math.inf
