"""The judge this product used before its analysis became anytime-valid, kept for comparison.

It compares two raw error rates against a fixed margin and runs a fixed-horizon Mann-Whitney U
test on latency, on the counts of the current step alone, at every look. ``loadtest.bench_judge``
and the tests run it through the same controller and simulator as the judge in
``metrics.analysis``, so that the difference is measured, not claimed. Not used by the router.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scipy.stats import mannwhitneyu

from metrics.analysis import FAIL, PASS, WAIT, Check, Verdict
from metrics.window import Reading, VersionCounts, bucket_counts, quantile, window

_EXPANDED_MAX = 20_000  # samples per side rebuilt from buckets for the U test


@dataclass(frozen=True)
class FixedThresholds:
    """Limits of a rollout's analysis (defaults are conservative)."""

    max_error_rate_increase: float = 0.02
    max_p99_ratio: float = 1.5
    min_agreement: float = 0.95
    confidence: float = 0.99
    max_error_rate: float = 0.05  # absolute limit, used where there is no reference to compare with
    # two regressors' predictions agree when |candidate - stable| <= abs_tol + rel_tol * |stable|
    agreement_abs_tol: float = 0.01
    agreement_rel_tol: float = 0.05


def _expand(cumulative: dict[float, float]) -> list[float]:
    pairs = [(le, c) for le, c in bucket_counts(cumulative) if c > 0]
    total = sum(c for _, c in pairs)
    scale = min(1.0, _EXPANDED_MAX / total) if total else 1.0
    finite = [le for le, _ in pairs if le != float("inf")]
    top = (max(finite) * 2) if finite else 1.0
    out: list[float] = []
    for le, c in pairs:
        out.extend([le if le != float("inf") else top] * max(1, round(c * scale)))
    return out


def latency_check(stable: dict[float, float], candidate: dict[float, float], t: FixedThresholds,
                  name: str = "latency_p99_ratio") -> Check:
    p99_s, p99_c = quantile(stable, 0.99), quantile(candidate, 0.99)
    if p99_s is None or p99_c is None:
        return Check(name, WAIT, None, t.max_p99_ratio, "no latency samples yet")
    ratio = p99_c / p99_s if p99_s > 0 else float("inf")
    a, b = _expand(candidate), [x * t.max_p99_ratio for x in _expand(stable)]
    p_value = float(mannwhitneyu(a, b, alternative="greater").pvalue) if a and b else 1.0
    slower = p_value < 1 - t.confidence
    p50_s, p50_c = quantile(stable, 0.5), quantile(candidate, 0.5)
    p50_ratio = p50_c / p50_s if p50_s and p50_c is not None else float("inf")
    # The test must say the candidate is slower than the tolerance allows, and then either the
    # tail (p99) or the bulk (p50) ratio must exceed it: a uniformly slower version fails even
    # when a noisy stable tail keeps the p99 ratio under the limit.
    failed = slower and (ratio > t.max_p99_ratio or p50_ratio > t.max_p99_ratio)
    detail = (f"p99 stable {p99_s * 1e3:.1f} ms, candidate {p99_c * 1e3:.1f} ms; p50 ratio "
              f"{p50_ratio:.2f}; Mann-Whitney U, candidate slower than {t.max_p99_ratio:g} x "
              f"stable: one-sided p={p_value:.3g} at confidence {t.confidence}")
    return Check(name, FAIL if failed else PASS, round(ratio, 4), t.max_p99_ratio, detail)


def judge(stable: VersionCounts, candidate: VersionCounts, t: FixedThresholds, *, min_requests: int,
          shadow: bool = False) -> Verdict:
    """Compare ``candidate`` with ``stable`` over one window."""
    checks: list[Check] = []
    if shadow:
        n_c = candidate.shadow_requests
        samples = {"stable_requests": stable.requests, "candidate_shadow_requests": n_c,
                   "compared": candidate.agree + candidate.disagree}
        if stable.requests < min_requests or n_c < min_requests or samples["compared"] < min_requests:
            checks.append(Check("sample_size", WAIT, n_c, min_requests,
                                "too few mirrored requests to judge"))
            return Verdict(WAIT, tuple(checks), samples)
        shadow_error_rate = candidate.shadow_errors / n_c
        increase = shadow_error_rate - stable.error_rate
        checks.append(Check("error_rate_increase", FAIL if increase > t.max_error_rate_increase else PASS,
                            round(increase, 6), t.max_error_rate_increase,
                            f"shadow errors {candidate.shadow_errors:.0f}/{n_c:.0f}"))
        checks.append(latency_check(stable.latency_buckets, candidate.shadow_latency_buckets, t))
        agreement = candidate.agreement
        checks.append(Check("agreement", FAIL if (agreement or 0) < t.min_agreement else PASS,
                            None if agreement is None else round(agreement, 6), t.min_agreement,
                            f"{candidate.agree:.0f} agree, {candidate.disagree:.0f} disagree"))
    else:
        samples = {"stable_requests": stable.requests, "candidate_requests": candidate.requests}
        if stable.requests < min_requests or candidate.requests < min_requests:
            checks.append(Check("sample_size", WAIT, min(stable.requests, candidate.requests),
                                min_requests, "too few requests per version to judge"))
            return Verdict(WAIT, tuple(checks), samples)
        increase = candidate.error_rate - stable.error_rate
        checks.append(Check("error_rate_increase", FAIL if increase > t.max_error_rate_increase else PASS,
                            round(increase, 6), t.max_error_rate_increase,
                            f"stable {stable.error_rate:.4f}, candidate {candidate.error_rate:.4f}"))
        checks.append(latency_check(stable.latency_buckets, candidate.latency_buckets, t))
    decision = FAIL if any(c.decision == FAIL for c in checks) else (
        WAIT if any(c.decision == WAIT for c in checks) else PASS)
    return Verdict(decision, tuple(checks), samples)


def judge_alone(version: VersionCounts, reference: VersionCounts | None, t: FixedThresholds, *,
                min_requests: int) -> Verdict:
    """Judge one version after a switch, against the window before it (or absolute limits)."""
    if version.requests < min_requests:
        return Verdict(WAIT, (Check("sample_size", WAIT, version.requests, min_requests,
                                    "too few requests since the switch"),),
                       {"requests": version.requests})
    if reference is not None and reference.requests >= min_requests:
        verdict = judge(reference, version, t, min_requests=min_requests)
        return Verdict(verdict.decision, verdict.checks,
                       {"reference_requests": reference.requests, "requests": version.requests})
    failed = version.error_rate > t.max_error_rate
    check = Check("error_rate", FAIL if failed else PASS, round(version.error_rate, 6),
                  t.max_error_rate, "no reference window before the switch: absolute limit")
    return Verdict(FAIL if failed else PASS, (check,), {"requests": version.requests})


def fixed_margin_analyse(rollout: dict[str, Any], plan: Any, routing: Any, reading: Reading,
                         now: float) -> Verdict:
    """The controller's ``analyse`` with this judge: the current step's counts, default limits."""
    from router.rollout_step import counts_of

    stats = window(reading, counts_of(rollout.get("step_counts")))
    versions = rollout.get("versions") or {}

    def of(slot: str) -> VersionCounts:
        return stats.get(versions.get(slot) or slot, VersionCounts())

    t = FixedThresholds(max_error_rate_increase=plan.thresholds.max_error_rate_increase,
                        max_p99_ratio=plan.thresholds.max_latency_ratio,
                        min_agreement=plan.thresholds.min_agreement)
    phase = rollout["phase"]
    if phase in ("shadow", "canary"):
        return judge(of(routing.stable), of(plan.candidate), t, min_requests=plan.min_requests,
                     shadow=phase == "shadow")
    counts = of(routing.stable)
    if phase == "reference":
        if counts.requests < plan.min_requests:
            return judge_alone(counts, None, t, min_requests=plan.min_requests)
        return Verdict(PASS, (), {"reference_requests": counts.requests})
    reference = rollout.get("reference")
    return judge_alone(counts, VersionCounts.from_doc(reference) if reference else None, t,
                       min_requests=plan.min_requests)
