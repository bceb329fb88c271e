"""ε as an output: TPR against ε per channel, and the smallest ε that reaches a target.

A signature ``s`` (values in [-1, 1]) is deployed as ``clean + ε·s`` (:mod:`codecloop_wire.poison`);
its direction is fixed and ε scales it. :func:`tpr_against_epsilon` evaluates one signature at several
ε on the real codec and reads, for each codec setting or channel, the TPR at a nominal false-positive
rate from the server's null model (calibrated p-values, valid far below 1/N; docs/statistics.md).
:func:`smallest_epsilon` bisects an ε grid for the smallest ε at which the WORST channel reaches a
target TPR.

Assumptions, stated because the answer rests on them:

- TPR grows with ε for a fixed signature and fixed clips (the bisection's premise). The points
  evaluated are all reported, so a violation is visible in the table and the plot.
- The signature is the one optimized at some ε₀ and rescaled; a signature re-optimized at the ε found
  may reach the target at a smaller ε still. ``codecloop optimize --epsilon E`` at the ε found tells.
- The target is met on the point estimate (``true_positives / n ≥ target_tpr``); the 95 %
  Clopper-Pearson interval of every point is reported next to it. With 15 units a TPR of 15/15 has
  the interval [78 %, 100 %]: choose the units (clips or source videos) and their number accordingly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from codecloop_wire.errors import CodecLoopValueError

from .client import Client
from .options import EvaluateOptions
from .types import DatasetCarriers

Unit = Literal["clips", "videos"]
UNITS: tuple[Unit, ...] = ("clips", "videos")
LEVEL = 1.0 / 255.0  # one uint8 level in ε units


@dataclass(frozen=True)
class EpsilonPoint:
    """One channel at one ε: detections at the nominal ``fpr`` among ``n`` units (clips or videos)."""

    epsilon: float  # L-inf budget, [0, 1] units
    channel: str  # the codec setting's or channel's label
    fpr: float  # nominal false-positive rate (marked when p < fpr)
    n: int
    true_positives: int
    tpr: float
    tpr_ci: tuple[float, float]  # 95 % Clopper-Pearson
    false_positives: int  # clean units called marked at this fpr (the null model's calibration check)
    psnr_db: float  # mean PSNR of the marked clips against the clean ones, before the channel

    def as_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon, "epsilon_levels": self.epsilon / LEVEL, "channel": self.channel, "fpr": self.fpr, "n": self.n,
            "true_positives": self.true_positives, "tpr": self.tpr, "tpr_ci": list(self.tpr_ci),
            "false_positives": self.false_positives, "psnr_db": self.psnr_db,
        }  # fmt: skip


@dataclass(frozen=True)
class EpsilonSearch:
    """The result of :func:`smallest_epsilon`: ``epsilon`` is the smallest grid ε at which every
    channel reached ``target_tpr`` at ``target_fpr`` (None: not even at the top of the range)."""

    target_tpr: float
    target_fpr: float
    unit: Unit
    low: float
    high: float
    step: float
    epsilon: float | None
    points: tuple[EpsilonPoint, ...]  # every point evaluated, ascending by ε then channel

    def worst(self, epsilon: float) -> EpsilonPoint:
        """The channel with the lowest TPR at ``epsilon`` (one that was evaluated)."""
        at = [p for p in self.points if math.isclose(p.epsilon, epsilon, rel_tol=1e-9, abs_tol=1e-12)]
        if not at:
            raise KeyError(f"epsilon {epsilon!r} was not evaluated")
        return min(at, key=lambda p: (p.tpr, p.channel))

    @property
    def evaluations(self) -> int:
        return len({p.epsilon for p in self.points})

    def as_dict(self) -> dict[str, Any]:
        return {
            "target_tpr": self.target_tpr, "target_fpr": self.target_fpr, "unit": self.unit, "low": self.low, "high": self.high,
            "step": self.step, "epsilon": self.epsilon, "epsilon_levels": None if self.epsilon is None else self.epsilon / LEVEL,
            "reached": self.epsilon is not None, "evaluations": self.evaluations, "points": [p.as_dict() for p in self.points],
        }  # fmt: skip


def _check_fraction(name: str, value: float, low_open: bool = True) -> None:
    ok = math.isfinite(value) and (0.0 < value if low_open else 0.0 <= value) and value <= 1.0
    if not ok:
        raise CodecLoopValueError(f"{name}: {value!r} is outside the allowed range {'(' if low_open else '['}0, 1]")


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise CodecLoopValueError(f"unit: {unit!r} is not one of {', '.join(UNITS)}")


def tpr_against_epsilon(
    client: Client,
    signature: Any,
    epsilons: Sequence[float],
    *,
    target_fpr: float = 1e-3,
    unit: Unit = "clips",
    options: EvaluateOptions | None = None,
    timeout: float | None = None,
) -> list[EpsilonPoint]:
    """Evaluate one signature at each ε; one :class:`EpsilonPoint` per ε and channel, ascending by ε.

    Args:
        client: a connected :class:`Client`.
        signature: (T, H, W, 3) in [-1, 1] (a numpy array or torch tensor), or a (1, T, H, W, 3) batch.
        epsilons: L-inf budgets in (0, 1]; duplicates are evaluated once.
        target_fpr: the nominal false-positive rate in (0, 1] the TPR is read at (null model).
        unit: ``clips`` (each clip a decision) or ``videos`` (each source video a decision, its clips
            combined by Stouffer's z; docs/statistics.md).
        options: carriers, codecs / channels and scorer; its ``epsilon`` and ``null_model`` are
            replaced by each ε and ``(target_fpr,)``.
    """
    _check_fraction("target_fpr", target_fpr)
    _check_unit(unit)
    if not len(epsilons):
        raise CodecLoopValueError("epsilons: give at least one")
    for e in epsilons:
        _check_fraction("epsilon", float(e))
    sig = np.asarray(signature, dtype=np.float32)
    if sig.ndim == 4:
        sig = sig[None]
    if sig.ndim != 5 or sig.shape[0] != 1:
        raise CodecLoopValueError(f"signature: shape {tuple(np.shape(signature))}; expected (T, H, W, 3) or (1, T, H, W, 3)")
    base = options or EvaluateOptions()
    points: list[EpsilonPoint] = []
    for eps in sorted({float(e) for e in epsilons}):
        result = client.evaluate(sig, base.updated(epsilon=eps, null_model=(target_fpr,)), timeout=timeout)
        for stats in result.candidates[0].codecs:
            ops = stats.video_tpr_at_fpr if unit == "videos" else stats.tpr_at_fpr
            op = next((p for p in ops if math.isclose(p.fpr, target_fpr, rel_tol=1e-9)), None)
            if op is None:
                raise CodecLoopValueError(f"the server returned no {unit} operating point at fpr {target_fpr:g} for {stats.label()}")
            points.append(
                EpsilonPoint(
                    epsilon=eps, channel=stats.label(), fpr=op.fpr, n=op.n, true_positives=op.true_positives, tpr=op.tpr,
                    tpr_ci=op.tpr_ci, false_positives=op.false_positives, psnr_db=stats.psnr_db,
                )  # fmt: skip
            )
    return points


def smallest_epsilon(
    client: Client,
    signature: Any,
    *,
    target_tpr: float,
    target_fpr: float = 1e-3,
    low: float = 0.5 * LEVEL,
    high: float = 8 * LEVEL,
    step: float = 0.25 * LEVEL,
    unit: Unit = "clips",
    options: EvaluateOptions | None = None,
    timeout: float | None = None,
) -> EpsilonSearch:
    """The smallest ε on the grid ``low, low + step, ..., high`` at which the worst channel's TPR at
    ``target_fpr`` is at least ``target_tpr``: ``high`` first (not reached there: ``epsilon`` None),
    then ``low``, then bisection: about 2 + log2((high - low) / step) evaluations (7 by default).

    Arguments as :func:`tpr_against_epsilon`; ``target_tpr`` in (0, 1]; ``0 < low < high ≤ 1``;
    ``step`` > 0 (the answer's resolution; default a quarter of a uint8 level).
    """
    _check_fraction("target_tpr", target_tpr)
    for name, value in (("low", low), ("high", high)):
        _check_fraction(name, value)
    if not low < high:
        raise CodecLoopValueError(f"low ({low:g}) must be below high ({high:g})")
    if not (math.isfinite(step) and 0 < step <= high - low):
        raise CodecLoopValueError(f"step: {step!r} is outside the allowed range (0, high - low = {high - low:g}]")
    grid = [low + i * step for i in range(int(math.floor((high - low) / step + 1e-9)) + 1)]
    if not math.isclose(grid[-1], high):
        grid.append(high)
    evaluated: dict[int, list[EpsilonPoint]] = {}

    def reached(i: int) -> bool:
        if i not in evaluated:
            evaluated[i] = tpr_against_epsilon(client, signature, [grid[i]], target_fpr=target_fpr, unit=unit, options=options, timeout=timeout)
        return min(p.tpr for p in evaluated[i]) >= target_tpr

    found: int | None = None
    if reached(len(grid) - 1):
        lo, hi = 0, len(grid) - 1
        if reached(lo):
            found = lo
        else:  # invariant: not reached at lo, reached at hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if reached(mid) else (mid, hi)
            found = hi
    points = tuple(p for i in sorted(evaluated) for p in sorted(evaluated[i], key=lambda p: p.channel))
    return EpsilonSearch(
        target_tpr=target_tpr, target_fpr=target_fpr, unit=unit, low=low, high=high, step=step,
        epsilon=None if found is None else grid[found], points=points,
    )  # fmt: skip


DEFAULT_GRID_LEVELS = (0.5, 1, 1.5, 2, 3, 4, 6, 8)  # the curve's ε, in uint8 levels (the smallest ε found is added)
DEFAULT_GRID = tuple(level * LEVEL for level in DEFAULT_GRID_LEVELS)


def epsilon_report(
    client: Client,
    signature: Any,
    *,
    target_tpr: float,
    target_fpr: float,
    search: DatasetCarriers,
    report: DatasetCarriers | None,
    options: EvaluateOptions | None = None,
    low: float = 0.25 * LEVEL,
    high: float = 16 * LEVEL,
    step: float = 0.25 * LEVEL,
    unit: Unit = "clips",
    grid: Sequence[float] = DEFAULT_GRID,
    folder: str | Path | None = None,
) -> dict[str, Any]:
    """ε as an output: :func:`smallest_epsilon` on the ``search`` carriers (a validation split), then
    the curve of TPR against ε per channel on the ``report`` carriers (held out; ``grid`` plus the ε
    found) so the answer is read where it was not chosen. With ``folder``: ``epsilon.json`` and
    ``tpr_vs_epsilon.png`` there. Returns that JSON's dict (ε in [0, 1] units and in uint8 levels)."""
    base = options or EvaluateOptions()
    found = smallest_epsilon(
        client, signature, target_tpr=target_tpr, target_fpr=target_fpr, low=low, high=high, step=step, unit=unit,
        options=base.updated(carriers=search),
    )  # fmt: skip
    out: dict[str, Any] = {"search": found.as_dict() | {"carriers": asdict(search)}, "report": None}
    shown = list(found.points)
    if report is not None:
        levels = sorted({*(float(e) for e in grid), *(() if found.epsilon is None else (found.epsilon,))})
        points = tpr_against_epsilon(client, signature, levels, target_fpr=target_fpr, unit=unit, options=base.updated(carriers=report))
        shown = points
        at = [p for p in points if found.epsilon is not None and math.isclose(p.epsilon, found.epsilon)]
        out["report"] = {
            "carriers": asdict(report),
            "at_epsilon": [p.as_dict() for p in at],
            "reached": bool(at) and min(p.tpr for p in at) >= target_tpr,
            "points": [p.as_dict() for p in points],
        }
    if folder is not None:
        from codecloop import plots

        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        (path / "epsilon.json").write_text(json.dumps(out, indent=1) + "\n")
        plots.epsilon_plot(path / "tpr_vs_epsilon.png", shown, target_tpr, found.epsilon, unit)
    return out


def summary_lines(out: dict[str, Any]) -> list[str]:
    """:func:`epsilon_report`'s result in a few printable lines."""
    s = out["search"]
    head = (f"smallest ε reaching TPR >= {s['target_tpr']:g} at FPR {s['target_fpr']:g} ({s['unit']}, worst channel) on "
            f"{s['carriers']['split']}: ")  # fmt: skip
    if s["epsilon"] is None:
        lines = [head + f"not reached up to {s['high'] * 255:g}/255 ({s['evaluations']} evaluations)"]
    else:
        lines = [head + f"{s['epsilon_levels']:g}/255 = {s['epsilon']:.5f} ({s['evaluations']} evaluations, resolution {s['step'] * 255:g}/255)"]
    r = out["report"]
    if r is not None and r["at_epsilon"]:
        parts = [f"{p['channel']} {p['true_positives']}/{p['n']} [{p['tpr_ci'][0]:.0%}, {p['tpr_ci'][1]:.0%}], {p['false_positives']} clean called marked"
                 for p in r["at_epsilon"]]  # fmt: skip
        lines.append(f"at that ε on {r['carriers']['split']}: " + "; ".join(parts) + (" (target met)" if r["reached"] else " (target NOT met)"))
    return lines
