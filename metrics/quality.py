"""Prediction quality from delayed labels: per-row scores, per-version summaries, McNemar's test.

Pure functions, no IO. The router joins a label to the predictions it remembered for the request
(``score``), adds the resulting counts up in the state store, and summarises them here
(``summarise``): accuracy with a Wilson interval and log loss for classifiers, MAE and RMSE for
regressors, and for two versions scored on the same rows (shadow), McNemar's test on the pairs
where exactly one of them was right.

Counts, as stored and summed (every value a number, so sums over instances and time buckets are
plain additions)::

    {"versions": {"v1": {"rows", "correct", "log_loss_sum", "abs_error_sum", "sq_error_sum"}},
     "pairs": {"v1 -> v2": {"rows", "stable_correct", "candidate_correct", "stable_only",
                            "candidate_only", "stable_abs_error_sum", "candidate_abs_error_sum",
                            "stable_sq_error_sum", "candidate_sq_error_sum"}}}

``stable_only`` counts rows stable got right and the candidate wrong; ``candidate_only`` the
reverse (McNemar's discordant pairs).

    >>> mcnemar(1, 9).p_value
    0.021484375
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy.stats import binom, chi2, norm

EPSILON = 1e-15  # probabilities are clipped to [EPSILON, 1 - EPSILON] for the log loss
EXACT_BELOW = 25  # discordant pairs below which McNemar's test is the exact binomial one
PAIR_SEPARATOR = " -> "


class LabelError(ValueError):
    """A label or value that cannot be scored against the remembered predictions."""


def match_label(label: Any, classes: Sequence[Any]) -> int | None:
    """The index of ``label`` among ``classes`` (a class value, or its text), else None."""
    if isinstance(label, bool) or not isinstance(label, str | int | float):
        return None
    for i, cls in enumerate(classes):
        if (label == cls and type(label) is not bool) or (isinstance(label, str) and label == str(cls)):
            return i
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_labels(answer: dict[str, Any], labels: Sequence[Any]) -> list[int]:
    """Each label's class index, or LabelError naming the first row that has none."""
    classes = answer.get("classes") or []
    indexes = []
    for row, label in enumerate(labels):
        index = match_label(label, classes)
        if index is None:
            raise LabelError(f"labels[{row}] = {label!r} is not one of version "
                             f"{answer.get('version')}'s classes {list(classes)!r}")
        indexes.append(index)
    return indexes


def check_values(values: Sequence[Any]) -> list[float]:
    """The values as floats, or LabelError naming the first that is not a finite number."""
    for row, value in enumerate(values):
        if not _finite(value):
            raise LabelError(f"values[{row}] = {value!r} is not a finite number")
    return [float(v) for v in values]


def score_classifier(answer: dict[str, Any], indexes: Sequence[int]) -> dict[str, float]:
    """One version's counts for labelled rows: rows, correct, log-loss sum (clipped)."""
    classes = answer["classes"]
    probabilities = answer.get("probabilities") or []
    correct = 0
    log_loss = 0.0
    for row, index in enumerate(indexes):
        predicted = answer["predictions"][row]
        if match_label(predicted, [classes[index]]) is not None:
            correct += 1
        p = probabilities[row][index] if row < len(probabilities) else 0.0
        p = min(max(float(p), EPSILON), 1 - EPSILON)
        log_loss -= math.log(p)
    return {"rows": len(indexes), "correct": correct, "log_loss_sum": log_loss}


def score_regressor(answer: dict[str, Any], values: Sequence[float]) -> dict[str, float]:
    """One version's counts for labelled rows: rows, absolute and squared error sums."""
    errors = [float(p) - v for p, v in zip(answer["predictions"], values, strict=True)]
    return {"rows": len(values), "abs_error_sum": sum(abs(e) for e in errors),
            "sq_error_sum": sum(e * e for e in errors)}


def row_correct(answer: dict[str, Any], indexes: Sequence[int]) -> list[bool]:
    classes = answer["classes"]
    return [match_label(answer["predictions"][row], [classes[index]]) is not None
            for row, index in enumerate(indexes)]


def score(served: dict[str, Any], shadow: dict[str, Any] | None,
          truth: Sequence[Any], task: str) -> dict[str, Any]:
    """The counts one feedback adds: the served version's, and under shadow the candidate's and
    the pair's (only when the candidate answered every row). ``task`` is ``classification``
    (``truth`` are labels) or ``regression`` (values). Raises LabelError for unusable truth."""
    counts: dict[str, Any] = {"versions": {}, "pairs": {}}
    versions = counts["versions"]
    if task == "classification":
        indexes = check_labels(served, truth)
        versions[served["version"]] = score_classifier(served, indexes)
        usable = shadow is not None and _same_rows(shadow, len(truth)) and \
            list(shadow.get("classes") or []) == list(served["classes"])
        if usable:
            assert shadow is not None
            versions[shadow["version"]] = score_classifier(shadow, indexes)
            ours, theirs = row_correct(served, indexes), row_correct(shadow, indexes)
            pair = {"rows": len(indexes), "stable_correct": sum(ours),
                    "candidate_correct": sum(theirs),
                    "stable_only": sum(1 for a, b in zip(ours, theirs, strict=True) if a and not b),
                    "candidate_only": sum(1 for a, b in zip(ours, theirs, strict=True)
                                          if b and not a)}
            counts["pairs"][pair_key(served["version"], shadow["version"])] = pair
        return counts
    values = check_values(truth)
    versions[served["version"]] = score_regressor(served, values)
    if shadow is not None and _same_rows(shadow, len(values)) and \
            all(_finite(p) for p in shadow["predictions"]):
        theirs = score_regressor(shadow, values)
        versions[shadow["version"]] = theirs
        ours = versions[served["version"]]
        counts["pairs"][pair_key(served["version"], shadow["version"])] = {
            "rows": len(values),
            "stable_abs_error_sum": ours["abs_error_sum"],
            "candidate_abs_error_sum": theirs["abs_error_sum"],
            "stable_sq_error_sum": ours["sq_error_sum"],
            "candidate_sq_error_sum": theirs["sq_error_sum"],
        }
    return counts


def _same_rows(answer: dict[str, Any], rows: int) -> bool:
    return len(answer.get("predictions") or []) == rows


def pair_key(stable: str, candidate: str) -> str:
    return f"{stable}{PAIR_SEPARATOR}{candidate}"


def add_counts(total: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """``total`` plus ``more`` (both in the counts shape), in place; returns ``total``."""
    for kind in ("versions", "pairs"):
        for name, fields in (more.get(kind) or {}).items():
            into = total.setdefault(kind, {}).setdefault(name, {})
            for field, value in fields.items():
                into[field] = into.get(field, 0) + value
    return total


def flatten(counts: dict[str, Any]) -> dict[str, float]:
    """Counts as ``{"<kind>\\t<name>\\t<field>": number}``, for stores that keep flat maps."""
    return {f"{kind}\t{name}\t{field}": float(value)
            for kind in ("versions", "pairs")
            for name, fields in (counts.get(kind) or {}).items()
            for field, value in fields.items()}


def unflatten(flat: dict[str, float]) -> dict[str, Any]:
    counts: dict[str, Any] = {"versions": {}, "pairs": {}}
    for key, value in flat.items():
        kind, name, field = key.split("\t", 2)
        slot = counts.setdefault(kind, {}).setdefault(name, {})
        slot[field] = slot.get(field, 0.0) + float(value)
    return counts


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on the discordant pairs of a paired comparison (two-sided)."""

    stable_only: int  # b: stable right, candidate wrong
    candidate_only: int  # c: candidate right, stable wrong
    statistic: float | None  # chi-square with continuity correction; None for the exact test
    p_value: float
    method: str  # "exact binomial" or "chi-square, continuity corrected"


def mcnemar(stable_only: int, candidate_only: int, exact_below: int = EXACT_BELOW) -> McNemar:
    """McNemar's test: exact (two-sided binomial, p = 1/2) when ``b + c < exact_below``, else the
    continuity-corrected chi-square with one degree of freedom (Edwards 1948).

        >>> round(mcnemar(150, 86).statistic, 2)
        16.82
    """
    b, c = int(stable_only), int(candidate_only)
    n = b + c
    if n == 0:
        return McNemar(b, c, None, 1.0, "exact binomial")
    if n < exact_below:
        p = min(1.0, 2.0 * float(binom.cdf(min(b, c), n, 0.5)))
        return McNemar(b, c, None, p, "exact binomial")
    statistic = (abs(b - c) - 1) ** 2 / n
    return McNemar(b, c, statistic, float(chi2.sf(statistic, 1)),
                   "chi-square, continuity corrected")


def wilson(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion; None without observations."""
    if n <= 0:
        return None
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _r(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def version_quality(fields: dict[str, float]) -> dict[str, Any]:
    """One version's summary: accuracy (95 % Wilson interval) and log loss, or MAE and RMSE."""
    rows = int(fields.get("rows", 0))
    if "correct" in fields or "log_loss_sum" in fields:
        correct = int(round(fields.get("correct", 0)))
        interval = wilson(correct, rows)
        return {"task": "classification", "rows": rows, "correct": correct,
                "accuracy": _r(correct / rows) if rows else None,
                "accuracy_ci95": None if interval is None else [_r(v) for v in interval],
                "log_loss": _r(fields.get("log_loss_sum", 0.0) / rows) if rows else None}
    return {"task": "regression", "rows": rows,
            "mae": _r(fields.get("abs_error_sum", 0.0) / rows) if rows else None,
            "rmse": _r(math.sqrt(fields.get("sq_error_sum", 0.0) / rows)) if rows else None}


def pair_quality(name: str, fields: dict[str, float]) -> dict[str, Any]:
    """A paired comparison: both versions on the same labelled rows; McNemar's test for
    classifiers, both MAEs for regressors."""
    stable, _, candidate = name.partition(PAIR_SEPARATOR)
    rows = int(fields.get("rows", 0))
    out: dict[str, Any] = {"stable": stable, "candidate": candidate, "rows": rows}
    if "stable_correct" in fields:
        b, c = int(fields.get("stable_only", 0)), int(fields.get("candidate_only", 0))
        test = mcnemar(b, c)
        out.update({
            "stable_accuracy": _r(fields["stable_correct"] / rows) if rows else None,
            "candidate_accuracy": _r(fields.get("candidate_correct", 0) / rows) if rows else None,
            "stable_right_candidate_wrong": b, "stable_wrong_candidate_right": c,
            "mcnemar": {"p_value": _r(test.p_value, 9), "statistic": _r(test.statistic),
                        "method": test.method},
        })
    else:
        out.update({
            "stable_mae": _r(fields.get("stable_abs_error_sum", 0.0) / rows) if rows else None,
            "candidate_mae": _r(fields.get("candidate_abs_error_sum", 0.0) / rows)
            if rows else None,
            "stable_rmse": _r(math.sqrt(fields.get("stable_sq_error_sum", 0.0) / rows))
            if rows else None,
            "candidate_rmse": _r(math.sqrt(fields.get("candidate_sq_error_sum", 0.0) / rows))
            if rows else None,
        })
    return out


def summarise(counts: dict[str, Any]) -> dict[str, Any]:
    """The ``quality`` section of ``GET /admin/analysis`` from summed counts."""
    return {
        "versions": {v: version_quality(f) for v, f in sorted((counts.get("versions") or {}).items())},
        "paired": [pair_quality(name, f) for name, f in sorted((counts.get("pairs") or {}).items())],
    }
