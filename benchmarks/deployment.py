"""The end-to-end deployment check, shared by benchmarks/deployment_outcome.py and
benchmarks/time_to_target.py ``--target deployment``: held-out test videos marked at their own size
(``codecloop.mark_video``, libx264 CRF 18), marked and unmarked copies sent through real channels,
detected (``codecloop.detect_video``), counted per video.

Channels (``CHANNELS``):

* ``crf28``: the ffmpeg CLI's libx264, CRF 28, preset medium, at native size (the default codec);
* ``social-crf28`` and ``messaging``: ``codecloop channel`` (at most 720 lines, CRF 28; at most 540
  lines, 15 fps, CRF 35 veryfast), the platform mix (``PLATFORM_MIX``).

Detection uses ``size`` = the marked size and ``fps`` = the marked rate; a video is called marked at
p < ``fpr``.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from codecloop import detect_video, mark_video
from codecloop.testing import realistic_clip
from codecloop_wire.stats import clopper_pearson

CHANNELS = ("crf28", "social-crf28", "messaging")
DEFAULT_CHANNEL = ("crf28",)
PLATFORM_MIX = ("social-crf28", "messaging")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=600)


def make_test_videos(out: Path, videos: list[Path], segments: int, frames: int, generated: int, zoom: int) -> list[Path]:
    """Each of ``videos`` cut into ``segments`` pieces of ``frames`` frames (25 fps, CRF 12), then
    ``generated`` camera pans over photographs (a 128 x 120 camera upsampled ``zoom`` times, fresh
    sensor noise), written in ``out``; their paths."""
    found = []
    for video in videos:
        for k in range(segments):
            path = out / f"{video.stem}-{k}.mp4"
            ffmpeg("-i", str(video), "-vf", f"select=gte(n\\,{k * frames})", "-frames:v", str(frames), "-an", "-c:v", "libx264",
                   "-crf", "12", "-pix_fmt", "yuv420p", "-r", "25", str(path))  # fmt: skip
            found.append(path)
    for seed in range(generated):
        found.append(generated_pan(out / f"generated-{seed}.mp4", seed, frames, zoom))
    return found


def generated_pan(path: Path, seed: int, frames: int, zoom: int) -> Path:
    """A camera pan over a photograph (codecloop.testing.realistic_clip(seed=1000 + seed), a 128 x 120
    camera upsampled ``zoom`` times, fresh sensor noise of sd 2), 25 fps, libx264 CRF 12, at ``path``."""
    # the photographs are small (300 lines and up): a 120 x 128 camera, upsampled, fresh sensor noise
    small = realistic_clip(seed=1000 + seed, t=frames, h=120, w=128).astype(np.float32)
    big = ndimage.zoom(small, (1, zoom, zoom, 1), order=1) + np.random.default_rng(seed).normal(0, 2.0, (frames, 120 * zoom, 128 * zoom, 3))
    clip = np.clip(np.rint(big), 0, 255).astype(np.uint8)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{128 * zoom}x{120 * zoom}", "-r", "25", "-i", "-",
                    "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", str(path)], input=clip.tobytes(), check=True)  # fmt: skip
    return path


NULL_SEED = 1000  # the null check's generated pans: seeds from here on, none shared with the test videos (0 ...)


def null_check(out: Path, count: int, frames: int, zoom: int, channels: tuple[str, ...], signature: np.ndarray, fpr: float,
               log: bool = False) -> dict[str, Any]:
    """The false-alarm side alone, on more videos than the outcome's: ``count`` unmarked generated pans
    (seeds NULL_SEED ...), each through every channel, detected (their own size, 25 fps). Returns per
    channel (and, with several, over all: no KS test there, one video's channels are not independent):
    n, false alarms k/n with the 95 % Clopper-Pearson interval, and the z values' mean, sd, max and
    the Kolmogorov-Smirnov p-value against N(0, 1) (calibrated: mean 0, sd 1)."""
    from scipy import stats

    zs: dict[str, list[float]] = {c: [] for c in channels}
    fa: dict[str, int] = {c: 0 for c in channels}
    for k in range(count):
        src = generated_pan(out / f"null-{k}.mp4", NULL_SEED + k, frames, zoom)
        for channel in channels:
            sent = send(src, channel, out / f"null-{k}.{channel}.mp4")
            d = detect_video(sent, signature, fpr=fpr, size=(128 * zoom, 120 * zoom), fps=25.0)
            zs[channel].append(d.z)
            fa[channel] += d.marked
            sent.unlink()
            if log:
                print(f"null-{k:<9} {channel:<13} clean   z {d.z:7.2f} p {d.p_value:9.2e} {'MARKED' if d.marked else ''}", flush=True)
        src.unlink()

    def describe(z: list[float], alarms: int) -> dict[str, Any]:
        a = np.asarray(z)
        return {"n": len(z), "false_alarms": alarms, "fpr_ci": clopper_pearson(alarms, len(z)), "z_mean": float(a.mean()),
                "z_sd": float(a.std(ddof=1)), "z_max": float(a.max()), "ks_p": float(stats.kstest(a, "norm").pvalue)}  # fmt: skip

    result = {c: describe(zs[c], fa[c]) for c in channels}
    if len(channels) > 1:
        # one video's channels are not independent draws: the pooled row counts alarms, no KS test
        result["all"] = describe([z for c in channels for z in zs[c]], sum(fa.values())) | {"ks_p": None}
    return result


def null_table(result: dict[str, Any], fpr: float) -> list[str]:
    """A markdown table of :func:`null_check`'s result."""
    lines = [f"| channel | unmarked videos called marked (p < {fpr:g}) | 95 % CI | z mean | z sd | z max | KS p vs N(0, 1) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for channel, r in result.items():
        lines.append(f"| {channel} | {r['false_alarms']}/{r['n']} | [{r['fpr_ci'][0]:.1%}, {r['fpr_ci'][1]:.1%}] | {r['z_mean']:+.2f} | "
                     f"{r['z_sd']:.2f} | {r['z_max']:.2f} | {'-' if r['ks_p'] is None else format(r['ks_p'], '.2f')} |")  # fmt: skip
    return lines


def send(src: Path, channel: str, dst: Path) -> Path:
    """``src`` through ``channel`` (a name in ``CHANNELS``), written to ``dst``."""
    if channel == "crf28":
        ffmpeg("-i", str(src), "-an", "-c:v", "libx264", "-crf", "28", "-preset", "medium", "-pix_fmt", "yuv420p", str(dst))
    else:
        subprocess.run([sys.executable, "-m", "codecloop.cli", "channel", str(src), str(dst), "--channel", channel],
                       check=True, capture_output=True, timeout=600)  # fmt: skip
    return dst


@dataclass(frozen=True)
class ChannelOutcome:
    """One channel's count over the test videos: marked videos called marked (true positives) and
    unmarked copies called marked (false alarms), each of ``n``, with 95 % Clopper-Pearson intervals."""

    n: int
    true_positives: int
    tpr_ci: tuple[float, float]
    false_positives: int
    fpr_ci: tuple[float, float]
    median_z: float

    @property
    def tpr(self) -> float:
        return self.true_positives / self.n if self.n else 0.0


def summarize(rows: list[dict[str, Any]], channels: tuple[str, ...]) -> dict[str, ChannelOutcome]:
    """Per channel, the outcome of ``rows`` (one per video, channel and kind, as :meth:`DeploymentCheck.check` gives)."""
    summary = {}
    for channel in channels:
        mine = [r for r in rows if r["channel"] == channel]
        tp = sum(r["marked"] for r in mine if r["kind"] == "marked")
        fp = sum(r["marked"] for r in mine if r["kind"] == "clean")
        n = sum(r["kind"] == "marked" for r in mine)
        med = float(np.median([r["z"] for r in mine if r["kind"] == "marked"])) if n else float("nan")
        summary[channel] = ChannelOutcome(n, tp, clopper_pearson(tp, n), fp, clopper_pearson(fp, n), med)
    return summary


def reached(summary: dict[str, ChannelOutcome], target_tpr: float) -> bool:
    """The deployment target: TPR >= ``target_tpr`` on every channel and no false alarm on any."""
    return all(o.tpr >= target_tpr and o.false_positives == 0 for o in summary.values())


def worst_tpr(summary: dict[str, ChannelOutcome]) -> float:
    """The lowest per-video TPR over the channels (the figure the target is on)."""
    return min(o.tpr for o in summary.values())


def table(summary: dict[str, ChannelOutcome]) -> list[str]:
    """A markdown table of ``summary``, one line per channel."""
    lines = ["| channel | marked videos called marked | 95 % CI | unmarked copies called marked | 95 % CI | median z (marked) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for channel, o in summary.items():
        lines.append(f"| {channel} | {o.true_positives}/{o.n} | [{o.tpr_ci[0]:.0%}, {o.tpr_ci[1]:.0%}] | {o.false_positives}/{o.n} | "
                     f"[{o.fpr_ci[0]:.0%}, {o.fpr_ci[1]:.0%}] | {o.median_z:.1f} |")  # fmt: skip
    return lines


class DeploymentCheck:
    """Test videos and the channels they go through; the unmarked copies are sent once (they do
    not depend on the signature), each :meth:`check` marks, sends and detects afresh."""

    def __init__(self, videos: list[Path], channels: tuple[str, ...], out: Path, fpr: float = 1e-3, log: bool = False) -> None:
        unknown = [c for c in channels if c not in CHANNELS]
        if unknown:
            raise ValueError(f"channels: {unknown} unknown; known: {CHANNELS}")
        self.videos, self.channels, self.out, self.fpr, self.log = videos, channels, out, fpr, log
        out.mkdir(parents=True, exist_ok=True)
        self.clean = {(v, c): send(v, c, out / f"{v.stem}.clean.{c}.mp4") for v in videos for c in channels}

    def check(self, signature: np.ndarray, epsilon: float | str) -> list[dict[str, Any]]:
        """Mark every test video with ``signature`` (T', H, W, 3) in [-1, 1] at ``epsilon``, send the
        marked and unmarked copies through every channel, detect: one row per video, channel and
        kind ("marked" / "clean") with z, p_value, marked (p < fpr), frames and the marked size."""
        rows = []
        for src in self.videos:
            marked = mark_video(src, self.out / f"{src.stem}.marked.mp4", signature, epsilon, threads=1)
            for channel in self.channels:
                sent = {"marked": send(Path(marked.output), channel, self.out / f"{src.stem}.marked.{channel}.mp4"), "clean": self.clean[(src, channel)]}
                for kind, video in sent.items():
                    d = detect_video(video, signature, fpr=self.fpr, size=(marked.width, marked.height), fps=marked.fps)
                    rows.append({"video": src.stem, "channel": channel, "kind": kind, "z": d.z, "p_value": d.p_value, "marked": d.marked,
                                 "frames": d.frames, "size": [marked.width, marked.height]})  # fmt: skip
                    if self.log:
                        print(f"{src.stem:<14} {channel:<13} {kind:<7} z {d.z:7.2f} p {d.p_value:9.2e} {'MARKED' if d.marked else ''}", flush=True)
        return rows
