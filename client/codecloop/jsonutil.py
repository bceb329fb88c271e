"""Strict JSON for run reports: no Infinity / NaN tokens, which most JSON parsers refuse.

Non-finite floats (an infinite PSNR when a signature changed no pixel, an unlimited time budget)
become ``null``; numpy scalars and arrays, tuples and dataclasses become plain JSON values.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def finite(obj: Any) -> Any:
    """A copy of ``obj`` made of dict / list / str / int / finite float / bool / None only."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [finite(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite` (obj) with ``allow_nan=False``."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def write(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as strict, indented JSON."""
    Path(path).write_text(dumps(obj, indent=1) + "\n")
