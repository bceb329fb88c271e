"""Budgets and rates as people write them: 4/255, 1/64."""

from __future__ import annotations

from fractions import Fraction


def fraction_label(x: float) -> str:
    """0.015625 -> '1/64', 0.00784 -> '2/255', 0.3 -> '3/10'; other values as %.3g. The CLI's
    fraction parser reads every label back to the same float."""
    f = Fraction(x).limit_denominator(1000)
    return f"{f.numerator}/{f.denominator}" if abs(float(f) - x) < 1e-9 and f.denominator > 1 else f"{x:.3g}"
