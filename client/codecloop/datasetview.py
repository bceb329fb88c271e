"""A dataset as people check it: which file went to which split with how many clips, and which files
were skipped and why (``codecloop info --dataset``, the lines ``optimize`` prints, summary.json's
``dataset`` section). Reads a :class:`codecloop.serverinfo.DatasetInfo` (``sources``, ``skipped``, ``folder``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from codecloop.serverinfo import DatasetInfo

SPLITS = ("train", "validation", "holdout")


def _splits(split_clips: Mapping[str, int]) -> list[str]:
    """The dataset's split names, train / validation / holdout first."""
    return [s for s in SPLITS if s in split_clips] + sorted(s for s in split_clips if s not in SPLITS)


def lines(dataset: DatasetInfo) -> list[str]:
    """Human-readable listing of a DatasetInfo: header, one line per source (file -> split: clips),
    one per skipped file (file -> skipped: reason), totals per split."""
    t, h, w = dataset.clip_shape
    where = f"folder {dataset.folder}" if dataset.folder else dataset.description
    out = [f"dataset {dataset.name}: {where}; clips of {t} frames x {h}x{w}; digest {dataset.digest}", f"split: {dataset.split_policy}"]
    width = max([len(s.name) for s in dataset.sources] + [len(s.name) for s in dataset.skipped] + [1])
    for source in dataset.sources:
        parts = ", ".join(f"{split} {source.split_clips[split]}" for split in _splits(source.split_clips))
        out.append(f"  {source.name:<{width}} -> {parts} clips")
    for skipped in dataset.skipped:
        out.append(f"  {skipped.name:<{width}} -> skipped: {skipped.reason}")
    out.append("total: " + ", ".join(f"{split} {dataset.split_clips[split]}" for split in _splits(dataset.split_clips)) + " clips")
    return out


def split_lines(dataset: DatasetInfo) -> list[str]:
    """One short line per split (``train: a.mp4 (12), b.mp4 (8)``) and one per skipped file: what an
    optimize run prints when it starts, so a change of split shows."""
    out = []
    for split in _splits(dataset.split_clips):
        names = [f"{s.name} ({s.split_clips[split]})" for s in dataset.sources if split in s.split_clips]
        out.append(f"dataset {dataset.name} {split}: {', '.join(names) or 'none'}")
    out += [f"dataset {dataset.name}: skipped {s.name}: {s.reason}" for s in dataset.skipped]
    return out


def summary(dataset: DatasetInfo) -> dict[str, Any]:
    """summary.json's ``dataset`` section: name, folder, digest, clip shape, split policy,
    ``sources`` per split (name and clips) and the skipped files with their reasons."""
    return {
        "name": dataset.name,
        "folder": dataset.folder or None,
        "description": dataset.description,
        "digest": dataset.digest,
        "clip_shape": list(dataset.clip_shape),
        "split_policy": dataset.split_policy,
        "sources": {
            split: [{"name": s.name, "clips": s.split_clips[split]} for s in dataset.sources if split in s.split_clips] for split in _splits(dataset.split_clips)
        },
        "skipped": [{"name": s.name, "reason": s.reason} for s in dataset.skipped],
    }
