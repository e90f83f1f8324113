"""Per-version statistics over a window: the difference of two cumulative readings.

A reading holds cumulative counters per version (requests, errors, latency histogram buckets,
shadow outcomes). A window is ``later - earlier``; when a version's counters went down (a
restarted router), that version counts from zero. Readings of several router instances add up
(``sum_readings``), and travel through the state store as JSON (``reading_to_doc``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from metrics.buckets import LATENCY_BUCKETS

UNREACHABLE_REASONS = frozenset({"refused", "reset", "connect_timeout", "connect_error", "error", "tls_error"})


@dataclass
class VersionCounts:
    """Cumulative (or windowed) statistics of one version."""

    requests: float = 0.0
    errors: float = 0.0
    latency_buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count
    shadow_requests: float = 0.0
    shadow_errors: float = 0.0
    shadow_latency_buckets: dict[float, float] = field(default_factory=dict)
    agree: float = 0.0
    disagree: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def agreement(self) -> float | None:
        total = self.agree + self.disagree
        return self.agree / total if total else None

    def to_doc(self) -> dict[str, Any]:
        """These counts as JSON-ready data (see :func:`counts_to_doc`)."""
        return counts_to_doc(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> VersionCounts:
        """The counts :meth:`to_doc` wrote (see :func:`counts_from_doc`)."""
        return counts_from_doc(doc)

    def went_down(self, earlier: VersionCounts) -> bool:
        """True when any counter is below ``earlier``'s: the version's counters restarted."""
        scalars = ("requests", "errors", "shadow_requests", "shadow_errors", "agree", "disagree")
        if any(getattr(self, name) < getattr(earlier, name) for name in scalars):
            return True
        pairs = ((self.latency_buckets, earlier.latency_buckets),
                 (self.shadow_latency_buckets, earlier.shadow_latency_buckets))
        return any(value < before.get(le, 0.0)
                   for after, before in pairs for le, value in after.items())

    def plus(self, other: VersionCounts) -> VersionCounts:
        """Field-by-field sum, histogram buckets by upper bound: two instances' counts as one."""

        def buckets(a: dict[float, float], b: dict[float, float]) -> dict[float, float]:
            summed = dict(a)
            for le, value in b.items():
                summed[le] = summed.get(le, 0.0) + value
            return summed

        return VersionCounts(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            latency_buckets=buckets(self.latency_buckets, other.latency_buckets),
            shadow_requests=self.shadow_requests + other.shadow_requests,
            shadow_errors=self.shadow_errors + other.shadow_errors,
            shadow_latency_buckets=buckets(
                self.shadow_latency_buckets, other.shadow_latency_buckets
            ),
            agree=self.agree + other.agree,
            disagree=self.disagree + other.disagree,
        )

    def minus(self, earlier: VersionCounts) -> VersionCounts:
        if self.went_down(earlier):
            # A restart zeroes all of a version's counters at once: count every one from zero
            # (one by one, a restarted counter already past its old value would be mixed with
            # ones that are not, and a window could hold more errors than requests).
            return replace(self, latency_buckets=dict(self.latency_buckets),
                           shadow_latency_buckets=dict(self.shadow_latency_buckets))

        def buckets(a: dict[float, float], b: dict[float, float]) -> dict[float, float]:
            return {le: v - b.get(le, 0.0) for le, v in a.items()}

        return VersionCounts(
            requests=self.requests - earlier.requests,
            errors=self.errors - earlier.errors,
            latency_buckets=buckets(self.latency_buckets, earlier.latency_buckets),
            shadow_requests=self.shadow_requests - earlier.shadow_requests,
            shadow_errors=self.shadow_errors - earlier.shadow_errors,
            shadow_latency_buckets=buckets(self.shadow_latency_buckets, earlier.shadow_latency_buckets),
            agree=self.agree - earlier.agree,
            disagree=self.disagree - earlier.disagree,
        )


Reading = dict[str, VersionCounts]

_FIELDS = frozenset(f.name for f in fields(VersionCounts))


def counts_to_doc(counts: VersionCounts) -> dict[str, Any]:
    """``counts`` as JSON-ready data (bucket bounds as strings), for the state store."""
    doc = dict(counts.__dict__)
    doc["latency_buckets"] = {str(k): v for k, v in counts.latency_buckets.items()}
    doc["shadow_latency_buckets"] = {str(k): v for k, v in counts.shadow_latency_buckets.items()}
    return doc


def counts_from_doc(doc: dict[str, Any]) -> VersionCounts:
    """The counts :func:`counts_to_doc` wrote; fields unknown here (a newer router's) stay out."""
    doc = {key: value for key, value in doc.items() if key in _FIELDS}
    doc["latency_buckets"] = {float(k): v for k, v in doc.get("latency_buckets", {}).items()}
    doc["shadow_latency_buckets"] = {
        float(k): v for k, v in doc.get("shadow_latency_buckets", {}).items()
    }
    return VersionCounts(**doc)


def reading_to_doc(reading: Reading) -> dict[str, dict[str, Any]]:
    return {version: counts_to_doc(counts) for version, counts in reading.items()}


def reading_from_doc(doc: dict[str, dict[str, Any]]) -> Reading:
    return {version: counts_from_doc(counts) for version, counts in doc.items()}


def sum_readings(readings: Iterable[Reading]) -> Reading:
    """Per-version sum of several readings (of several router instances, say).

        >>> one, other = {"v1": VersionCounts(requests=3)}, {"v1": VersionCounts(requests=4)}
        >>> sum_readings([one, other])["v1"].requests
        7.0
    """
    summed: Reading = {}
    for reading in readings:
        for version, counts in reading.items():
            summed[version] = summed.get(version, VersionCounts()).plus(counts)
    return summed


def went_down(later: Reading, earlier: Reading) -> bool:
    """True when any version's counter in ``later`` is below ``earlier``'s (a version missing
    from ``later`` counts as all zeros): the counters started again."""
    return any(later.get(version, VersionCounts()).went_down(counts)
               for version, counts in earlier.items())


def window(later: Reading, earlier: Reading | None) -> Reading:
    """Per-version statistics between two readings (everything since start if ``earlier`` is None)."""
    if earlier is None:
        return later
    return {v: c.minus(earlier.get(v, VersionCounts())) for v, c in later.items()}


def bucket_counts(cumulative: dict[float, float]) -> list[tuple[float, float]]:
    """Cumulative ``le`` buckets -> (upper bound, count in that bucket), ascending."""
    out, previous = [], 0.0
    for le in sorted(cumulative):
        count = max(cumulative[le] - previous, 0.0)
        out.append((le, count))
        previous = max(previous, cumulative[le])
    return out


def quantile(cumulative: dict[float, float], q: float) -> float | None:
    """Quantile estimated from histogram buckets by linear interpolation (as PromQL does)."""
    pairs = bucket_counts(cumulative)
    total = sum(c for _, c in pairs)
    if total <= 0:
        return None
    rank, seen, lower = q * total, 0.0, 0.0
    for le, count in pairs:
        if seen + count >= rank and count > 0:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - seen) / count
        seen += count
        lower = le if le != float("inf") else lower
    return lower


DEFAULT_BOUNDS = (*LATENCY_BUCKETS, float("inf"))
