"""Judging a candidate against stable: fail only on evidence of harm, with anytime-valid bounds.

The counts judged are everything since the phase began (a canary's evidence carries across its
steps), and an analysis may look at them as often as it likes: every check is built from
confidence sequences (``metrics.sequential``), which hold at every sample size at once. With
``confidence`` 0.99, a candidate no worse than the plan's tolerances is rolled back by an
analysis in at most 1 % of rollouts, however many analyses it takes.

Checks, each with its estimate, confidence interval, limit and sample sizes:

- ``error_rate_increase``: candidate's error rate minus stable's; harm is more than
  ``max_error_rate_increase``;
- ``latency_p50`` and ``latency_p<q>`` (``latency_quantile``, default p99): the candidate's
  quantile against stable's, from the histogram buckets; harm is slower by more than
  ``max_latency_ratio`` times *and* by more than ``max_latency_increase_ms``, so a
  one-millisecond difference is never harm;
- ``agreement`` (shadow): the share of compared rows on which both versions agree; harm is
  below ``min_agreement``.

A check *fails* when its bounds show harm; it *passes* when they show none. The verdict fails
if any check fails; it waits while the step has fewer than ``min_requests`` per version; and
with ``require_evidence`` (for the final promotion), it waits until every check shows, by its
other bound, that the candidate is within the tolerance, saying how many more requests that
should take.

    >>> judge(stable_counts, candidate_counts, Thresholds(), min_requests=50).decision   # doctest: +SKIP
    'pass'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from metrics.sequential import lower_bound, mean_bounds, quantile_bounds, upper_bound
from metrics.window import VersionCounts, quantile

PASS, WAIT, FAIL = "pass", "wait", "fail"
QUALITY_CHECKS = ("accuracy_drop", "mae_increase", "quality")  # their "needed" counts labels
MIN_MEAN_SAMPLES = 30  # labelled rows per version before a mean's bounds (MAE) are trusted
Quality = tuple[dict[str, float] | None, dict[str, float] | None]  # (stable's, the candidate's)
_GROWTH = (1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 100, 150, 250, 400, 650, 1000)


@dataclass(frozen=True)
class Thresholds:
    """Tolerances of a rollout's analysis; each is named after what it governs."""

    max_error_rate_increase: float = 0.02
    # latency harm: the candidate's quantile above stable's by more than the ratio AND the margin
    max_latency_ratio: float = 1.5
    max_latency_increase_ms: float = 25.0
    latency_quantile: float = 0.99  # the tail quantile checked beside the median
    min_agreement: float = 0.95
    confidence: float = 0.99
    max_error_rate: float = 0.05  # absolute limit, used where there is no reference to compare with
    # two regressors' predictions agree when |candidate - stable| <= abs_tol + rel_tol * |stable|
    agreement_abs_tol: float = 0.01
    agreement_rel_tol: float = 0.05
    # the quality check, from labelled predictions (POST /feedback); None leaves it out
    max_accuracy_drop: float | None = None  # classifiers: stable's accuracy minus the candidate's
    max_mae_increase: float | None = None  # regressors: the candidate's MAE minus stable's

    @property
    def quality(self) -> bool:
        """The plan asks for the quality check."""
        return self.max_accuracy_drop is not None or self.max_mae_increase is not None

    def latency_limit_ms(self, stable_ms: float) -> float:
        """The slowest a candidate's quantile may be, given stable's, before it is harm."""
        return max(stable_ms * self.max_latency_ratio, stable_ms + self.max_latency_increase_ms)


@dataclass(frozen=True)
class Check:
    """One sub-check: what it estimated, its bounds, the limit it was held to, what it decided."""

    name: str
    decision: str
    value: float | None
    threshold: float | None
    detail: str = ""
    interval: tuple[float, float] | None = None
    proven: bool = False  # the bounds show the candidate within the tolerance
    needed: float | None = None  # further candidate requests expected before it is proven


@dataclass(frozen=True)
class Verdict:
    """The outcome of one analysis and everything it was based on."""

    decision: str
    checks: tuple[Check, ...]
    samples: dict[str, float] = field(default_factory=dict)
    needed: float | None = None  # while waiting: further candidate requests to a decision
    minutes: float | None = None  # the same at the current rate
    needed_labels: float | None = None  # while waiting for labels: further labelled rows
    input_drift: dict[str, Any] | None = None  # what the slots said of their inputs meanwhile

    def evidence(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"decision": self.decision, "samples": self.samples,
                               "checks": [_check_doc(c) for c in self.checks]}
        if self.needed is not None:
            doc["needed_requests"] = round(self.needed)
            if self.minutes is not None:
                doc["needed_minutes"] = round(self.minutes, 1)
        if self.needed_labels is not None:
            doc["needed_labels"] = round(self.needed_labels)
        if self.input_drift is not None:
            doc["input_drift"] = self.input_drift
        return doc

    def deciding(self) -> Check | None:
        """The check that decided: the first failed one, else the first waiting one."""
        for wanted in (FAIL, WAIT):
            for check in self.checks:
                if check.decision == wanted:
                    return check
        return None


def _check_doc(check: Check) -> dict[str, Any]:
    doc = asdict(check)
    if check.interval is not None:
        doc["interval"] = [_finite(x) for x in check.interval]
    if check.needed is None:
        doc.pop("needed")
    return doc


def _finite(x: float) -> float | None:
    return None if math.isinf(x) or math.isnan(x) else round(x, 6)


def _scaled(counts: VersionCounts, k: float) -> VersionCounts:
    """The same rates over ``k`` times the requests: what more data at today's estimates gives."""
    return VersionCounts(
        requests=counts.requests * k, errors=counts.errors * k,
        latency_buckets={le: v * k for le, v in counts.latency_buckets.items()},
        shadow_requests=counts.shadow_requests * k, shadow_errors=counts.shadow_errors * k,
        shadow_latency_buckets={le: v * k for le, v in counts.shadow_latency_buckets.items()},
        agree=counts.agree * k, disagree=counts.disagree * k)


def _needed(prove: Callable[[float], bool], n: float) -> float | None:
    """Further requests until ``prove(k)`` holds for ``k`` times today's data (None: not at 1000x)."""
    for k in _GROWTH:
        if prove(k):
            return n * (k - 1)
    return None


# -- the checks --------------------------------------------------------------------------------


def error_check(stable_n: float, stable_errors: float, cand_n: float, cand_errors: float,
                t: Thresholds, alpha: float, explain: bool = False,
                name: str = "error_rate_increase") -> Check:
    """Candidate's error rate minus stable's, against ``max_error_rate_increase``."""
    a = alpha / 2  # one bound per version
    limit = t.max_error_rate_increase
    low = lower_bound(cand_errors, cand_n, a) - upper_bound(stable_errors, stable_n, a)
    high = upper_bound(cand_errors, cand_n, a) - lower_bound(stable_errors, stable_n, a)
    rate_c = cand_errors / cand_n if cand_n else 0.0
    rate_s = stable_errors / stable_n if stable_n else 0.0
    harm, proven = low > limit, high <= limit
    detail = (f"stable {stable_errors:.0f}/{stable_n:.0f} ({rate_s:.2%}), candidate "
              f"{cand_errors:.0f}/{cand_n:.0f} ({rate_c:.2%}); increase between {low:+.4f} and "
              f"{high:+.4f}; harm is more than {limit:g}")
    needed = None
    if explain and not harm and not proven:
        needed = _needed(lambda k: upper_bound(cand_errors * k, cand_n * k, a)
                         - lower_bound(stable_errors * k, stable_n * k, a) <= limit, cand_n)
    return Check(name, FAIL if harm else PASS, round(rate_c - rate_s, 6), limit, detail,
                 (low, high), proven, needed)


def _sorted_buckets(cumulative: dict[float, float]) -> tuple[list[float], list[float]]:
    bounds = sorted(cumulative)
    running, counts = 0.0, []
    for le in bounds:  # cumulative counts never fall (a window can hold tiny negative noise)
        running = max(running, cumulative[le])
        counts.append(running)
    return bounds, counts


def _next_bound(bounds: list[float], x: float) -> float:
    """The bucket bound after ``x``: a quantile shown to be above ``x`` is at least that."""
    for b in bounds:
        if b > x:
            return b
    return math.inf


def latency_checks(stable: dict[float, float], candidate: dict[float, float], t: Thresholds,
                   alpha: float, explain: bool = False) -> list[Check]:
    """The median and the tail quantile of the candidate against stable's (ms), from buckets."""
    quantiles = sorted({0.5, t.latency_quantile})
    a = alpha / (2 * len(quantiles))  # two bounds per quantile
    sb, sc = _sorted_buckets(stable)
    cb, cc = _sorted_buckets(candidate)
    checks = []
    for q in quantiles:
        name = f"latency_p{q * 100:g}"
        est_s, est_c = quantile(stable, q), quantile(candidate, q)
        if not sc or not cc or sc[-1] <= 0 or cc[-1] <= 0 or est_s is None or est_c is None:
            checks.append(Check(name, PASS, None, None, "no latency samples yet", None, False,
                                None))
            continue

        def bounds(k: float, q: float = q) -> tuple[float, float, float, float]:
            s_low, s_high = quantile_bounds(sb, [c * k for c in sc], q, a)
            c_low, c_high = quantile_bounds(cb, [c * k for c in cc], q, a)
            return s_low, s_high, c_low, c_high

        s_low, s_high, c_low, c_high = bounds(1.0)
        harm_limit = t.latency_limit_ms(s_high * 1e3)  # the most stable's quantile can be
        harm = c_low * 1e3 >= harm_limit

        def shown_within(k: float, q: float = q) -> bool:
            s_low, _, _, c_high = bounds(k, q)
            return c_high * 1e3 <= t.latency_limit_ms(_next_bound(sb, s_low) * 1e3)

        proven = shown_within(1.0)
        # The limit is set by the most stable's quantile can be: harm is shown when the
        # candidate's interval lies wholly above it (unknown while stable's bound is open).
        limit = None if math.isinf(harm_limit) else round(harm_limit, 4)
        detail = (f"p{q * 100:g} stable {est_s * 1e3:.3g} ms (at most {_ms(s_high)}), candidate "
                  f"{est_c * 1e3:.3g} ms (above {_ms(c_low)}, at most {_ms(c_high)}); harm is "
                  f"slower than {t.max_latency_ratio:g}x and +{t.max_latency_increase_ms:g} ms "
                  f"of stable's, so above {_ms(harm_limit / 1e3)}")
        needed = None
        if explain and not harm and not proven:
            needed = _needed(shown_within, cc[-1])
        checks.append(Check(name, FAIL if harm else PASS, round(est_c * 1e3, 4), limit,
                            detail, (c_low * 1e3, c_high * 1e3), proven, needed))
    return checks


def _ms(seconds: float) -> str:
    return "unknown" if math.isinf(seconds) else f"{seconds * 1e3:.3g} ms"


def agreement_check(agree: float, disagree: float, t: Thresholds, alpha: float,
                    explain: bool = False) -> Check:
    """The share of compared rows on which both versions agree, against ``min_agreement``."""
    n = agree + disagree
    low, high = lower_bound(agree, n, alpha), upper_bound(agree, n, alpha)
    limit = t.min_agreement
    harm, proven = high < limit, low >= limit
    needed = None
    if explain and not harm and not proven and n:
        needed = _needed(lambda k: lower_bound(agree * k, n * k, alpha) >= limit, n)
    value = agree / n if n else None
    return Check("agreement", FAIL if harm else PASS, None if value is None else round(value, 6),
                 limit, f"{agree:.0f} agree, {disagree:.0f} disagree; agreement between "
                 f"{low:.4f} and {high:.4f}; harm is below {limit:g}", (low, high), proven, needed)


def _task(*fields: dict[str, float] | None) -> str | None:
    for f in fields:
        if f and ("correct" in f or "log_loss_sum" in f):
            return "classification"
        if f and "abs_error_sum" in f:
            return "regression"
    return None


def quality_checks(quality: Quality, t: Thresholds, alpha: float, min_labels: int,
                   explain: bool = False) -> tuple[list[Check], float]:
    """The quality check on labelled rows, and how many more labelled rows it needs.

    ``quality`` is (stable's, the candidate's) summed quality counts (``metrics.quality``):
    classifiers are held to ``max_accuracy_drop`` (anytime-valid bounds on each accuracy, as
    for error rates), regressors to ``max_mae_increase`` (asymptotic confidence sequences on
    each mean absolute error). Harm is shown whenever the bounds show it; the check cannot pass
    before each version has ``min_labels`` labelled rows.
    """
    stable, cand = quality[0] or {}, quality[1] or {}
    n_s, n_c = float(stable.get("rows", 0.0)), float(cand.get("rows", 0.0))
    short = max(0.0, min_labels - min(n_s, n_c))
    task = _task(stable, cand)
    a = alpha / 2  # one bound per version
    if task is None:
        return [Check("quality", PASS, None, None, "no labelled rows yet: POST /feedback "
                      "sends the truth for earlier requests")], max(short, 1.0)
    if task == "classification":
        limit = t.max_accuracy_drop
        if limit is None:
            return [Check("quality", WAIT, None, None, "the versions are classifiers but the "
                          "plan sets only max_mae_increase: set max_accuracy_drop")], math.inf
        right_s, right_c = float(stable.get("correct", 0.0)), float(cand.get("correct", 0.0))
        wrong_s, wrong_c = n_s - right_s, n_c - right_c
        # the drop in accuracy is the increase in the share of wrong answers
        low = lower_bound(wrong_c, n_c, a) - upper_bound(wrong_s, n_s, a)
        high = upper_bound(wrong_c, n_c, a) - lower_bound(wrong_s, n_s, a)
        harm, proven = low > limit, high <= limit and not short
        acc_s, acc_c = (right_s / n_s if n_s else None), (right_c / n_c if n_c else None)
        needed = None
        if explain and not harm and not proven:
            needed = _needed(lambda k: upper_bound(wrong_c * k, n_c * k, a)
                             - lower_bound(wrong_s * k, n_s * k, a) <= limit, max(n_c, 1.0))
        value = None if acc_s is None or acc_c is None else round(acc_s - acc_c, 6)
        detail = (f"accuracy stable {_share(right_s, n_s)}, candidate {_share(right_c, n_c)}; "
                  f"drop between {low:+.4f} and {high:+.4f}; harm is a drop of more than "
                  f"{limit:g}")
        return [Check("accuracy_drop", FAIL if harm else PASS, value, limit, detail,
                      (low, high), proven, needed)], short
    limit = t.max_mae_increase
    if limit is None:
        return [Check("quality", WAIT, None, None, "the versions are regressors but the plan "
                      "sets only max_accuracy_drop: set max_mae_increase")], math.inf
    t_star = max(float(min_labels), 100.0)  # where the bounds are tightest

    def bounds(k: float) -> tuple[float, float]:
        if min(n_s, n_c) < MIN_MEAN_SAMPLES:
            return -math.inf, math.inf
        s_low, s_high = mean_bounds(stable.get("abs_error_sum", 0.0) * k,
                                    stable.get("sq_error_sum", 0.0) * k, n_s * k, a, t_star)
        c_low, c_high = mean_bounds(cand.get("abs_error_sum", 0.0) * k,
                                    cand.get("sq_error_sum", 0.0) * k, n_c * k, a, t_star)
        return c_low - s_high, c_high - s_low

    low, high = bounds(1.0)
    harm, proven = low > limit, high <= limit and not short
    mae_s = stable.get("abs_error_sum", 0.0) / n_s if n_s else None
    mae_c = cand.get("abs_error_sum", 0.0) / n_c if n_c else None
    needed = None
    if explain and not harm and not proven:
        needed = _needed(lambda k: bounds(k)[1] <= limit, max(n_c, 1.0))
    value = None if mae_s is None or mae_c is None else round(mae_c - mae_s, 6)
    detail = (f"MAE stable {_num(mae_s)} over {n_s:.0f} labelled rows, candidate {_num(mae_c)} "
              f"over {n_c:.0f}; increase between {_num(low)} and {_num(high)}; harm is an "
              f"increase of more than {limit:g}")
    return [Check("mae_increase", FAIL if harm else PASS, value, limit, detail, (low, high),
                  proven, needed)], short


def _share(right: float, n: float) -> str:
    return f"{right:.0f}/{n:.0f} ({right / n:.2%})" if n else "no labelled rows"


def _num(x: float | None) -> str:
    return "unknown" if x is None or math.isinf(x) else f"{x:.4g}"


# -- the verdict -------------------------------------------------------------------------------


def _decide(checks: list[Check], samples: dict[str, float], short: float, min_requests: int,
            require_evidence: bool, rate: float | None, labels_short: float = 0.0,
            min_labels: int = 0) -> Verdict:
    """Fail on any harm; wait for the step's samples and the labels; with ``require_evidence``
    wait for proof."""
    if any(c.decision == FAIL for c in checks):
        return Verdict(FAIL, tuple(checks), samples)
    if short > 0:
        checks.insert(0, Check("sample_size", WAIT, min_requests - short, min_requests,
                               f"{short:.0f} more requests per version in this step before it "
                               "can pass"))
        return Verdict(WAIT, tuple(checks), samples, short, _minutes(short, rate))
    mismatch = [c for c in checks if c.name == "quality" and c.decision == WAIT]
    if mismatch:
        return Verdict(WAIT, tuple(checks), samples)
    if labels_short > 0:
        checks.insert(0, Check("labels", WAIT, max(min_labels - labels_short, 0.0), min_labels,
                               f"{labels_short:.0f} more labelled rows (POST /feedback) for the "
                               f"version with fewer before the quality check can pass; it "
                               f"needs {min_labels} per version"))
        return Verdict(WAIT, tuple(checks), samples, needed_labels=labels_short)
    if require_evidence and not all(c.proven for c in checks):
        waiting = [replace(c, decision=WAIT) if not c.proven else c for c in checks]
        needs = [c.needed for c in waiting if c.decision == WAIT and c.name not in QUALITY_CHECKS]
        labels = [c.needed for c in waiting if c.decision == WAIT and c.name in QUALITY_CHECKS]
        needed = None if any(n is None for n in needs) else max(needs, default=0.0)
        needed_labels = None if not labels or any(n is None for n in labels) else max(labels)
        if needs == [] and labels:
            needed = None
        return Verdict(WAIT, tuple(waiting), samples, needed, _minutes(needed, rate),
                       needed_labels=needed_labels)
    return Verdict(PASS, tuple(checks), samples)


def _minutes(needed: float | None, rate: float | None) -> float | None:
    return needed / rate / 60.0 if needed is not None and rate else None


def judge(stable: VersionCounts, candidate: VersionCounts, t: Thresholds, *, min_requests: int,
          shadow: bool = False, step: tuple[float, float] | None = None,
          require_evidence: bool = False, alpha: float | None = None,
          rate: float | None = None, quality: Quality | None = None,
          min_labels: int = 0) -> Verdict:
    """Compare ``candidate`` with ``stable`` over everything since the phase began.

    ``step`` is (stable's, the candidate's) requests in the current step, which must reach
    ``min_requests`` before the step passes (default: the totals). ``alpha`` is this analysis's
    share of ``1 - confidence`` (a plan with two judged phases gives each half). ``rate`` is the
    candidate's requests per second, to turn "requests still needed" into minutes. ``quality``
    is (stable's, the candidate's) quality counts from labelled predictions: with a plan that
    asks for the quality check (``max_accuracy_drop`` or ``max_mae_increase``), it is one more
    check, which needs ``min_labels`` labelled rows per version before it can pass.
    """
    alpha = (1.0 - t.confidence) if alpha is None else alpha
    judge_quality = t.quality and quality is not None
    checks: list[Check] = []
    labels_short = 0.0
    if shadow:
        n_c = candidate.shadow_requests
        samples = {"stable_requests": stable.requests, "candidate_shadow_requests": n_c,
                   "compared": candidate.agree + candidate.disagree}
        a = alpha / (4 if judge_quality else 3)
        if stable.requests and n_c:
            checks.append(error_check(stable.requests, stable.errors, n_c, candidate.shadow_errors,
                                      t, a, require_evidence))
            checks += latency_checks(stable.latency_buckets, candidate.shadow_latency_buckets, t, a,
                                     require_evidence)
        if candidate.agree + candidate.disagree:
            checks.append(agreement_check(candidate.agree, candidate.disagree, t, a,
                                          require_evidence))
        have = min(step) if step else min(stable.requests, n_c, samples["compared"])
    else:
        samples = {"stable_requests": stable.requests, "candidate_requests": candidate.requests}
        a = alpha / (3 if judge_quality else 2)
        if stable.requests and candidate.requests:
            checks.append(error_check(stable.requests, stable.errors, candidate.requests,
                                      candidate.errors, t, a, require_evidence))
            checks += latency_checks(stable.latency_buckets, candidate.latency_buckets, t, a,
                                     require_evidence)
        have = min(step) if step else min(stable.requests, candidate.requests)
    if judge_quality:
        assert quality is not None
        more, labels_short = quality_checks(quality, t, a, min_labels, require_evidence)
        checks += more
        samples = {**samples, **_label_samples(quality)}
    return _decide(checks, samples, max(0.0, min_requests - have), min_requests,
                   require_evidence, rate, labels_short, min_labels)


def _label_samples(quality: Quality) -> dict[str, float]:
    return {"stable_labelled": float((quality[0] or {}).get("rows", 0.0)),
            "candidate_labelled": float((quality[1] or {}).get("rows", 0.0))}


def judge_alone(version: VersionCounts, reference: VersionCounts | None, t: Thresholds, *,
                min_requests: int, step: float | None = None, require_evidence: bool = False,
                alpha: float | None = None, rate: float | None = None,
                quality: Quality | None = None, min_labels: int = 0) -> Verdict:
    """Judge one version after a switch, against the window before it (or absolute limits).

    ``quality`` is (the version before the switch's, this version's) quality counts."""
    alpha = (1.0 - t.confidence) if alpha is None else alpha
    if reference is not None and reference.requests >= min_requests:
        verdict = judge(reference, version, t, min_requests=min_requests,
                        step=None if step is None else (reference.requests, step),
                        require_evidence=require_evidence, alpha=alpha, rate=rate,
                        quality=quality, min_labels=min_labels)
        samples = {"reference_requests": reference.requests, "requests": version.requests}
        if t.quality and quality is not None:
            samples.update({"reference_labelled": verdict.samples.get("stable_labelled", 0.0),
                            "labelled": verdict.samples.get("candidate_labelled", 0.0)})
        return replace(verdict, samples=samples)
    samples = {"requests": version.requests}
    checks = []
    judge_quality = t.quality and quality is not None
    a = alpha / 2 if judge_quality else alpha
    if version.requests:
        n, e, limit = version.requests, version.errors, t.max_error_rate
        low, high = lower_bound(e, n, a / 2), upper_bound(e, n, a / 2)
        needed = None
        if require_evidence and not low > limit and not high <= limit:
            needed = _needed(lambda k: upper_bound(e * k, n * k, a / 2) <= limit, n)
        checks.append(Check("error_rate", FAIL if low > limit else PASS, round(e / n, 6), limit,
                            f"{e:.0f}/{n:.0f} failed, between {low:.4f} and {high:.4f}; no "
                            f"reference window before the switch: harm is more than {limit:g}",
                            (low, high), high <= limit, needed))
    labels_short = 0.0
    if judge_quality:
        assert quality is not None
        more, labels_short = quality_checks(quality, t, a, min_labels, require_evidence)
        checks += more
    have = version.requests if step is None else step
    return _decide(checks, samples, max(0.0, min_requests - have), min_requests,
                   require_evidence, rate, labels_short, min_labels)
