"""Which SIMD level libx264 runs at: chosen deliberately, because the bitstream depends on it.

Measured on an AVX-512 CPU (tests/test_determinism.py keeps measuring it): with x264's own CPU
detection (which picks its AVX-512 code there) the same clip encoded 25 times at CRF 28 medium gave
11 different bitstreams; x264's AVX-512 code is not deterministic. Forced to ``AVX2``, ``AVX``,
``SSE4.2`` or ``SSSE3`` every encode gave one and the same bitstream, the same at all four levels;
``SSE2`` and ``no-asm`` give another one. So the levels in :data:`LEVELS` form one determinism
class, and ``auto`` picks the fastest of them that this CPU has. x264 crashes when told to use
instructions the CPU lacks, so every level is checked against the CPU first.

``native`` hands the choice back to x264 (its own detection): only for CPUs that have none of
:data:`LEVELS` (non-x86 machines); results are then not guaranteed to repeat.
"""

from __future__ import annotations

import functools
from pathlib import Path

from codecloop_wire.errors import CodecLoopValueError

# Fastest first. Each needs these CPU features (numpy's runtime detection names), x264's own
# definition of the level: AVX2 implies FMA3, BMI1/2 and LZCNT in x264's cpu.c.
LEVELS: dict[str, tuple[str, ...]] = {
    "AVX2": ("SSSE3", "SSE41", "SSE42", "AVX", "FMA3", "AVX2", "BMI", "BMI2", "LZCNT"),
    "AVX": ("SSSE3", "SSE41", "SSE42", "AVX"),
    "SSE4.2": ("SSSE3", "SSE41", "SSE42"),
    "SSSE3": ("SSSE3",),
}
NATIVE = "native"
CHOICES = ("auto", *LEVELS, NATIVE)


@functools.cache
def cpu_features() -> frozenset[str]:
    """The CPU features the running machine has (numpy's runtime detection, which also checks that
    the OS saves AVX state), e.g. ``{"SSSE3", "AVX2", "AVX512F", ...}``; empty on non-x86."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.26
        from numpy.core._multiarray_umath import __cpu_features__ as features
    found = {name for name, present in features.items() if present}
    # numpy 1.26 does not list BMI/LZCNT; Linux's flags do (abm = LZCNT)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), [])
        found |= {name for flag, name in (("bmi1", "BMI"), ("bmi2", "BMI2"), ("abm", "LZCNT")) if flag in flags}
    return frozenset(found)


def supported(level: str) -> bool:
    """Whether this CPU has every instruction x264 uses at ``level`` (a key of :data:`LEVELS`)."""
    return set(LEVELS[level]) <= cpu_features()


def resolve(requested: str = "auto") -> str:
    """The level to run x264 at: a key of :data:`LEVELS` or ``native``.

    ``auto`` = the fastest level of :data:`LEVELS` this CPU supports. Raises CodecLoopValueError
    naming ``x264_asm`` when the name is unknown, the CPU lacks the level, or (``auto``) the CPU
    has none of them.
    """
    if requested not in CHOICES:
        raise CodecLoopValueError(f"x264_asm: unknown level {requested!r}; allowed: {CHOICES}")
    if requested == NATIVE:
        return NATIVE
    if requested == "auto":
        for level in LEVELS:
            if supported(level):
                return level
        raise CodecLoopValueError(
            f"x264_asm: this CPU has none of the deterministic x264 levels {tuple(LEVELS)} "
            f"(at least SSSE3 is needed); start the server with x264_asm={NATIVE!r} to let x264 choose "
            "(results are then not guaranteed to repeat)"
        )
    if not supported(requested):
        missing = sorted(set(LEVELS[requested]) - cpu_features())
        raise CodecLoopValueError(f"x264_asm: this CPU lacks {missing} needed by level {requested!r}; use 'auto'")
    return requested


_configured: str | None = None


def configure(requested: str) -> str:
    """Set this process's level once at server start (``codecloop serve --x264-asm``); returns it.

    Only the default of :class:`~codecloop_server.codecs.CodecSettings` reads it: settings objects
    carry their level, so worker processes get it with every task, never from this global."""
    global _configured
    _configured = resolve(requested)
    return _configured


def default() -> str:
    """The configured level, else ``resolve("auto")`` on this machine."""
    return _configured if _configured is not None else _auto()


@functools.cache
def _auto() -> str:
    return resolve("auto")


def x264_params(level: str) -> str:
    """The ``x264-params`` value for ``level`` (also what the ``ffmpeg`` CLI takes): ``asm=AVX2``;
    empty for ``native``."""
    return "" if level == NATIVE else f"asm={level}"
