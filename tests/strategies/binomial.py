"""Confidence bounds for split tests: how far a fair split may stray by chance alone."""

from __future__ import annotations

from scipy.stats import binom

CONFIDENCE = 0.999


def interval(n: int, percent: int, confidence: float = CONFIDENCE) -> tuple[int, int]:
    """Central `confidence` interval of Binomial(n, percent/100) hit counts, bounds inclusive."""
    tail = (1 - confidence) / 2
    p = percent / 100
    return int(binom.ppf(tail, n, p)), int(binom.ppf(1 - tail, n, p))
