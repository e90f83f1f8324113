"""Disagreement analytics: what one compared request adds, and what the added-up tallies say.

Pure: a request's rows and the two answers in, a :class:`PairTally` out (counts to add, the
disagreeing rows to keep for review); ``summarize`` turns the stored counts of one pair of
versions into the JSON of ``GET /admin/disagreements``.

Classifiers get a confusion matrix, rows for stable's class and columns for the candidate's,
classes as the models name them, and the distribution of each row's largest probability
difference. Regressors get no matrix: any binning of a value on the user's own scale would be
arbitrary, and the value differences already say how far apart the two are. They get the
distribution of each row's absolute difference on decade buckets; a row disagrees when it is
outside the agreement tolerance.

Counts are a flat map from a field to an integer, so that every store can add them atomically
(Redis ``HINCRBY``, an SQL upsert). A field is a JSON array::

    ["rows"]                      rows compared
    ["agree"]                     rows that agree
    ["task", "classification"]    rows compared as classifiers (or "regression")
    ["m", "benign", "malignant"]  rows stable called benign and the candidate malignant
    ["d", 0.05]                   rows whose difference is above the previous bound, up to 0.05
    ["d", null]                   rows whose difference is above the last bound

Example::

    tally = tally_pair(request_body, stable_answer, candidate_answer, agrees, keep=10)
    store.record_disagreements("v1", "v2", tally.counts, tally.samples, keep=100, ttl_s=86400)
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from metrics.router import PROBABILITY_DIFF_BUCKETS, VALUE_DIFF_BUCKETS

MAX_SAMPLE_INPUT_BYTES = 16 * 1024  # a larger input row is kept as null, flagged as too large
MAX_CLASS_CHARS = 200  # a longer class name is not counted in the matrix (a broken answer)


def field_key(*parts: Any) -> str:
    """A counts field: its parts as a compact JSON array."""
    return json.dumps(list(parts), separators=(",", ":"))


@dataclass(frozen=True)
class PairTally:
    """What one compared request adds: counts, and the rows that disagree (at most ``keep``)."""

    counts: dict[str, int]
    samples: list[dict[str, Any]] = field(default_factory=list)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _inputs(request_body: bytes, rows: int) -> list[Any] | None:
    """The request's rows, when the body has exactly ``rows`` of them."""
    try:
        instances = orjson.loads(request_body)["instances"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return instances if isinstance(instances, list) and len(instances) == rows else None


def _sample_input(row: Any) -> tuple[Any, bool]:
    encoded = orjson.dumps(row)
    return (None, True) if len(encoded) > MAX_SAMPLE_INPUT_BYTES else (row, False)


def tally_pair(request_body: bytes, stable_body: bytes, candidate_body: bytes,
               agrees: Callable[[float, float], bool], keep: int) -> PairTally | None:
    """Row-by-row tally of two answers to one request; None if they cannot be compared row by row.

    ``agrees(stable, candidate)`` says whether two regressors' values agree; classifiers agree
    on a row when they predict the same class.
    """
    try:
        ours, theirs = orjson.loads(stable_body), orjson.loads(candidate_body)
        p1, p2 = ours["predictions"], theirs["predictions"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(p1, list) or not isinstance(p2, list) or len(p1) != len(p2) or not p1:
        return None
    regression = "probabilities" not in ours and "probabilities" not in theirs
    if regression:
        if not all(_number(v) for v in (*p1, *p2)):
            return None
        diffs = [abs(b - a) for a, b in zip(p1, p2, strict=True)]
        agreeing = [agrees(a, b) for a, b in zip(p1, p2, strict=True)]
        bounds = VALUE_DIFF_BUCKETS
    else:
        q1, q2 = ours.get("probabilities"), theirs.get("probabilities")
        if not isinstance(q1, list) or not isinstance(q2, list) or len(q1) != len(p1) \
                or len(q2) != len(p1):
            return None
        try:
            diffs = [max((abs(a - b) for a, b in zip(r1, r2, strict=False)), default=0.0)
                     for r1, r2 in zip(q1, q2, strict=True)]
        except TypeError:
            return None
        agreeing = [a == b for a, b in zip(p1, p2, strict=True)]
        bounds = PROBABILITY_DIFF_BUCKETS
    counts: Counter[str] = Counter()
    counts[field_key("rows")] = len(p1)
    counts[field_key("agree")] = sum(agreeing)
    counts[field_key("task", "regression" if regression else "classification")] = len(p1)
    for diff in diffs:
        i = bisect_left(bounds, diff)
        counts[field_key("d", bounds[i] if i < len(bounds) else None)] += 1
    if not regression:
        for a, b in zip(p1, p2, strict=True):
            if len(json.dumps(a)) <= MAX_CLASS_CHARS and len(json.dumps(b)) <= MAX_CLASS_CHARS:
                counts[field_key("m", a, b)] += 1
    samples = []
    disagreeing = [i for i, ok in enumerate(agreeing) if not ok][:max(keep, 0)]
    inputs = _inputs(request_body, len(p1)) if disagreeing else None
    for i in disagreeing:
        row, too_large = _sample_input(inputs[i]) if inputs is not None else (None, False)
        sample: dict[str, Any] = {"row": i, "input": row, "stable_prediction": p1[i],
                                  "candidate_prediction": p2[i], "difference": diffs[i]}
        if too_large:
            sample["input_too_large"] = True
        if not regression:
            sample["stable_probabilities"] = ours["probabilities"][i]
            sample["candidate_probabilities"] = theirs["probabilities"][i]
        samples.append(sample)
    return PairTally(dict(counts), samples)


def _class_order(value: Any) -> tuple[int, float, str]:
    """Numbers in numeric order, then every other class by its JSON text."""
    return (0, value, "") if _number(value) else (1, 0.0, json.dumps(value))


def summarize(counts: Mapping[str, int]) -> dict[str, Any]:
    """The stored counts of one pair as JSON: rows, agreement, confusion matrix, differences.

    ``confusion_matrix.counts[i][j]`` is the number of rows stable called ``classes[i]`` and
    the candidate ``classes[j]``; classes are those either version predicted, numbers first.
    ``differences.buckets`` count rows per bucket (not cumulatively): a row counts in the first
    bucket whose ``le`` is at least its difference; ``le: null`` is above the last bound.
    """
    rows = agree = 0
    tasks: Counter[str] = Counter()
    matrix: dict[tuple[str, str], int] = {}
    diffs: dict[float | None, int] = {}
    for key, n in counts.items():
        try:
            name, *rest = json.loads(key)
        except (ValueError, TypeError):
            continue
        if name == "rows":
            rows += int(n)
        elif name == "agree":
            agree += int(n)
        elif name == "task" and len(rest) == 1:
            tasks[str(rest[0])] += int(n)
        elif name == "m" and len(rest) == 2:
            matrix[(json.dumps(rest[0]), json.dumps(rest[1]))] = int(n)
        elif name == "d" and len(rest) == 1:
            diffs[rest[0]] = int(n)
    task = tasks.most_common(1)[0][0] if tasks else None
    summary: dict[str, Any] = {
        "task": task,
        "rows": rows,
        "agreeing_rows": agree,
        "disagreeing_rows": rows - agree,
        "agreement": agree / rows if rows else None,
    }
    if task == "classification":
        index = sorted({c for pair in matrix for c in pair},
                       key=lambda c: _class_order(json.loads(c)))
        summary["confusion_matrix"] = {
            "rows": "stable", "columns": "candidate", "classes": [json.loads(c) for c in index],
            "counts": [[matrix.get((s, c), 0) for c in index] for s in index],
        }
        bounds: tuple[float, ...] = PROBABILITY_DIFF_BUCKETS
        kind = "probability"
    else:
        summary["confusion_matrix"] = None
        bounds = VALUE_DIFF_BUCKETS
        kind = "value"
    if task == "regression":
        summary["confusion_matrix_note"] = ("regressors have no classes: see the value "
                                            "differences, and samples outside the tolerance")
    summary["differences"] = {
        "kind": kind,
        "per": "row",
        "buckets": [{"le": b, "count": diffs.get(b, 0)} for b in (*bounds, None)],
    }
    return summary
