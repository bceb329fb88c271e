"""A run folder of the run layer (:class:`codecloop.run.Run`, every back-end): what is written
where, atomically, and how a resumed run finds it.

Layout: ``log.jsonl`` (one strict-JSON line per generation's candidate), ``validation.jsonl``
(one per validated candidate), ``checkpoint.pkl`` (the whole state after the last completed
generation, replaced atomically), ``best.npy`` (the kept signature, float32 (T or 1, H, W, 3) in [-1, 1]),
``summary.json`` (the report) and the plots (plots.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from codecloop import jsonutil
from codecloop_wire.errors import CodecLoopValueError


class JsonLog:
    """An append-only JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, *entries: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.writelines(jsonutil.dumps(e) + "\n" for e in entries)

    def keep(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        """Drop the lines ``predicate`` refuses (a resumed run: steps after its checkpoint)."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.path.write_text("".join(ln + "\n" for ln in lines if predicate(json.loads(ln))))

    def clear(self) -> None:
        self.path.write_text("")


class RunFolder:
    """``folder`` with a checkpoint file named ``checkpoint``; nothing is written (the folder is not
    even made) before :meth:`create`, so a run refused up front leaves no empty folder behind."""

    def __init__(self, folder: str | Path, checkpoint: str) -> None:
        self.path = Path(folder)
        if self.path.exists() and not self.path.is_dir():
            raise CodecLoopValueError(f"out: {self.path} is a file, not a run folder")
        self.log = JsonLog(self.path / "log.jsonl")
        self.validation_log = JsonLog(self.path / "validation.jsonl")
        self.checkpoint_path = self.path / checkpoint

    def create(self) -> None:
        """Make the folder (and its parents) if needed."""
        self.path.mkdir(parents=True, exist_ok=True)

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.exists()

    def read_checkpoint(self) -> bytes:
        return self.checkpoint_path.read_bytes()

    def write_checkpoint(self, blob: bytes) -> None:
        """Replace the checkpoint atomically: a run killed mid-write resumes from the previous one."""
        tmp = self.checkpoint_path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, self.checkpoint_path)

    def save_best(self, signature: np.ndarray) -> None:
        np.save(self.path / "best.npy", signature)

    def write_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """summary.json in strict JSON (an infinite PSNR becomes null); returns what was written."""
        jsonutil.write(self.path / "summary.json", summary)
        return jsonutil.finite(summary)  # type: ignore[no-any-return]
