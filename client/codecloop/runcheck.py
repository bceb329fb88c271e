"""Resume is a contract: a run folder is resumed only with the settings it was started with.

A run folder's checkpoint stores the run's *settings*: every field that decides what is searched
and how (optimizer, epsilon, codecs, channels, objective, clips, seeds, parameterization, the
dataset's content digest), flattened to ``dotted.name -> JSON value``. A rerun into the folder
compares its own settings with those; any difference refuses the rerun with
:class:`RunSettingsError`, one line per difference, naming the CLI flag where there is one.
The *limits* (how far to go: ``budget``, ``max_seconds``, ``patience``; the CLI's ``--steps``
sets ``budget`` for the gradient back-ends) are not settings: a rerun with a larger limit
continues the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from codecloop import jsonutil
from codecloop.units import fraction_label
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopValueError

# how far a run goes, not what it searches: a resume may change these (RunConfig)
LIMITS = frozenset({"budget", "max_seconds", "patience"})

# sections only some back-ends use: left out while None, so a run without one compares as before it existed
OPTIONAL = frozenset({"gradient", "lead_channel"})

# settings -> the `codecloop optimize` flag that sets them (the SDK field name is shown for the rest)
FLAGS = {
    "optimizer": "--optimizer", "epsilon": "--epsilon", "codecs": "--crf / --preset",
    "channels": "--channel", "scorer": "--scorer",
    "objective.name": "--objective", "objective.target_fpr": "--target-fpr",
    "objective.poisoned_quantile": "--margin-quantile", "objective.centre_weight": "--centre-weight",
    "train.dataset": "--dataset", "train.num_clips": "--train-clips", "fresh_clips": "--fresh-clips",
    "validation.split": "--validation-split", "validation.num_clips": "--validation-clips", "validation": "--validation-split",
    "validate_every": "--validate-every", "holdout.num_clips": "--holdout-clips", "popsize": "--popsize",
    "sigma0": "--sigma0", "seed": "--seed", "racing": "--racing / --no-racing", "parameterization": "--param",
    "gradient.lr": "--lr", "gradient": "--optimizer",
}  # fmt: skip


class RunSettingsError(CodecLoopValueError):
    """A rerun into a run folder with other settings; ``differences`` lists them, one line each."""

    def __init__(self, folder: Path, differences: list[str]) -> None:
        self.differences = differences
        super().__init__(
            f"{folder}: holds a run with other settings ({len(differences)} difference{'s' * (len(differences) > 1)}); "
            "rerun with the same settings to resume it, --overwrite (Run(..., overwrite=True)) to start afresh, "
            "or another --out:\n" + "\n".join(f"  {d}" for d in differences)
        )


def settings(config: Any, **extra: Any) -> dict[str, Any]:
    """``config`` (a dataclass) without its limits, plus ``extra``, flattened to dotted names with
    strict-JSON values (tuples become lists, dataclasses dicts)."""
    fields = {k: v for k, v in asdict(config).items() if k not in LIMITS and not (k in OPTIONAL and v is None)}
    if "racing" in fields:
        fields["racing"] = race_label(fields["racing"], fields["train"]["num_clips"])
    return _flatten(jsonutil.finite({**fields, **extra}))


def race_label(racing: Mapping[str, Any] | None, train_clips: int) -> str:
    """A run's race as one setting, every field at its effective value (a field left None is the
    server's default), so that a default race and the same race spelled out compare equal:
    'off' or 'on (first_clips 4, eta 2, finalists 1)'. ``train_clips``: 0 = the whole split (taken
    to hold at least the first round's clips). The centre weight follows the objective: not shown."""
    if racing is None:
        return "off"
    first = racing["first_clips"]
    if first is None:
        first = defaults.RACE_FIRST_CLIPS if train_clips == 0 else min(defaults.RACE_FIRST_CLIPS, train_clips)
    eta = defaults.RACE_ETA if racing["eta"] is None else racing["eta"]
    finalists = defaults.RACE_FINALISTS if racing["finalists"] is None else racing["finalists"]
    return f"on (first_clips {first}, eta {eta}, finalists {finalists})"


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= _flatten(value, name + ".")
        else:
            out[name] = value
    return out


def _show(name: str, value: Any) -> str:
    """A setting's value as people write it: 2/255, a list as JSON, a missing one as 'unset'."""
    if value is _MISSING:
        return "unset"
    if isinstance(value, float) and name.endswith(("epsilon", "fpr")):
        return fraction_label(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


_MISSING = object()


def differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``name (flag): <value in the folder> in the run folder, <value> now`` for each setting that differs."""
    lines = []
    for name in sorted(set(saved) | set(now)):
        old, new = saved.get(name, _MISSING), now.get(name, _MISSING)
        if old != new:
            flag = FLAGS.get(name) or FLAGS.get(name.split(".")[0])
            label = f"{name} ({flag})" if flag else name
            lines.append(f"{label}: {_show(name, old)} in the run folder, {_show(name, new)} now")
    return lines


def check(folder: Path, saved: Mapping[str, Any] | None, now: Mapping[str, Any]) -> None:
    """Raise :class:`RunSettingsError` unless ``saved`` (None: a checkpoint from before settings
    were stored, accepted) equals ``now``."""
    if saved is None:
        return
    diff = differences(_race_as_one(saved), now)
    if diff:
        raise RunSettingsError(folder, diff)


def _race_as_one(saved: Mapping[str, Any]) -> dict[str, Any]:
    """Settings saved before the race was one setting (``racing`` None, or ``racing.eta`` ...), as now."""
    out = dict(saved)
    if "racing" in out and not isinstance(out["racing"], str):
        out["racing"] = race_label(None, 0)
    fields = {k.split(".", 1)[1]: out.pop(k) for k in list(out) if k.startswith("racing.")}
    if fields:
        out["racing"] = race_label({"first_clips": None, "eta": None, "finalists": None} | fields, int(out.get("train.num_clips") or 0))
    return out


# every file a run folder may hold: what --overwrite removes (nothing else in the folder is touched)
RUN_FILES = ("checkpoint.pkl", "checkpoint.pt", "checkpoint.tmp", "log.jsonl", "validation.jsonl", "best.npy", "summary.json")


def clear(folder: Path, extra_patterns: Iterable[str] = ("*.png",)) -> None:
    """Remove a run's files from ``folder`` (``--overwrite``): the checkpoint, logs, signature,
    summary and plots."""
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for pattern in extra_patterns:
        for path in folder.glob(pattern):
            path.unlink()
