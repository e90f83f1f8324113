"""Anytime-valid bounds for shares and histogram quantiles: the e-values, the bounds they give, and
their coverage when a rollout looks at its data again and again."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import xlogy
from scipy.stats import beta, lognorm

from metrics.buckets import LATENCY_BUCKETS
from metrics.sequential import (
    mean_bounds,
    mean_radius,
    mixture_rho,
    log_e_above,
    log_e_below,
    lower_bound,
    quantile_bounds,
    share_above,
    share_below,
    upper_bound,
)

INF = math.inf
BOUNDS = (*LATENCY_BUCKETS, INF)
ALPHA = 0.05
# the sample sizes at which the coverage simulations look: 45 looks from 10 to 3000
LOOKS = np.unique(np.geomspace(10, 3000, 45).astype(int))


# -- the e-value is the mixture it claims to be -----------------------------------------------------


def mixture(s: int, n: int, p0: float, lo: float, hi: float) -> float:
    """Log of the uniform mixture over (lo, hi) of the likelihood ratio p vs p0, by quadrature."""
    f = n - s

    def log_ratio(p: float) -> float:
        return float(xlogy(s, p / p0) + xlogy(f, (1 - p) / (1 - p0)))

    peak = min(max(s / n, lo), hi)  # where the ratio is largest: scaled out to keep quad in range
    top = log_ratio(peak)
    inside = [peak] if lo < peak < hi else None
    integral, _ = quad(
        lambda p: math.exp(log_ratio(p) - top),
        lo,
        hi,
        points=inside,
        epsabs=0.0,
        epsrel=1e-11,
        limit=200,
    )
    return top + math.log(integral) - math.log(hi - lo)


E_VALUE_CASES = [  # (successes, trials, p0)
    (0, 10, 0.1),
    (3, 10, 0.1),
    (10, 10, 0.5),
    (30, 100, 0.2),
    (7, 200, 0.01),
    (150, 300, 0.45),
    (1, 1000, 0.001),
    (520, 1000, 0.5),
    (2, 2, 0.9),
    (60, 100, 0.5),
]


@pytest.mark.parametrize(("s", "n", "p0"), E_VALUE_CASES)
def test_the_e_values_equal_the_truncated_uniform_mixture_integrated_numerically(
    s: int, n: int, p0: float
) -> None:
    # quad's relative error is 1e-11, betainc's ~1e-14: the logs agree to 1e-8
    assert log_e_above(s, n, p0) == pytest.approx(mixture(s, n, p0, p0, 1.0), rel=1e-8, abs=1e-8)
    assert log_e_below(s, n, p0) == pytest.approx(mixture(s, n, p0, 0.0, p0), rel=1e-8, abs=1e-8)


def test_array_e_values_equal_the_scalar_ones() -> None:
    counts = np.array([0, 1, 5, 40, 99, 100])
    for p0 in (0.02, 0.5, 0.97):
        above, below = log_e_above(counts, 100, p0), log_e_below(counts, 100, p0)
        assert above == pytest.approx([log_e_above(int(c), 100, p0) for c in counts], rel=1e-12)
        assert below == pytest.approx([log_e_below(int(c), 100, p0) for c in counts], rel=1e-12)


def test_share_tests_decide_at_one_over_alpha() -> None:
    assert share_above(60, 100, 0.5, 0.05) is False  # a fixed-n test would reject (p = 0.028)
    assert share_above(70, 100, 0.5, 0.05) is True
    assert share_below(30, 100, 0.5, 0.05) is True
    assert share_below(40, 100, 0.5, 0.05) is False
    for s in (55, 62, 66, 70):  # the decision is exactly "e-value at least 1/alpha"
        assert share_above(s, 100, 0.5, ALPHA) == (log_e_above(s, 100, 0.5) >= math.log(1 / ALPHA))


# -- against the exact fixed-sample interval ---------------------------------------------------------

# Clopper-Pearson intervals as published to four decimals: 0/10, 10/10 and 5/10 as quoted in
# standard tables; 3/20, 42/100, 12/30 (90 %) and 85/120 (99 %) from the worked-example table of
# codingace.net's Clopper-Pearson calculator. Others are 1 - (alpha/2)^(1/n) for 0 of n.
PUBLISHED_CP = [  # (successes, trials, two-sided confidence, lower, upper)
    (0, 10, 0.95, 0.0, 0.3085),
    (10, 10, 0.95, 0.6915, 1.0),
    (5, 10, 0.95, 0.1871, 0.8129),
    (0, 20, 0.95, 0.0, 0.1684),
    (3, 20, 0.95, 0.0321, 0.3789),
    (42, 100, 0.95, 0.3220, 0.5229),
    (12, 30, 0.90, 0.2495, 0.5661),
    (85, 120, 0.99, 0.5904, 0.8092),
]


def clopper_pearson(s: int, n: int, confidence: float) -> tuple[float, float]:
    a = (1 - confidence) / 2
    low = float(beta.ppf(a, s, n - s + 1)) if s > 0 else 0.0
    high = float(beta.ppf(1 - a, s + 1, n - s)) if s < n else 1.0
    return low, high


@pytest.mark.parametrize(("s", "n", "confidence", "low", "high"), PUBLISHED_CP)
def test_anytime_bounds_are_at_least_as_wide_as_the_exact_fixed_sample_interval(
    s: int, n: int, confidence: float, low: float, high: float
) -> None:
    cp_low, cp_high = clopper_pearson(s, n, confidence)
    assert (cp_low, cp_high) == pytest.approx((low, high), abs=5e-5)  # four printed decimals
    a = (1 - confidence) / 2  # each side of the two-sided interval
    # brentq finds the bound to ~1e-7; a bound valid at every n is valid at this one, and no
    # valid one-sided bound monotone in s is tighter than the exact one
    assert lower_bound(s, n, a) <= cp_low + 1e-6
    assert upper_bound(s, n, a) >= cp_high - 1e-6
    if 0 < s < n:  # looking at every n costs width: strictly wider inside
        assert upper_bound(s, n, a) - lower_bound(s, n, a) > cp_high - cp_low


# -- edges and shape --------------------------------------------------------------------------------


def test_nothing_observed_shows_nothing() -> None:
    assert lower_bound(0, 0, ALPHA) == 0.0 and upper_bound(0, 0, ALPHA) == 1.0
    assert share_above(0, 0, 0.5, ALPHA) is False and share_below(0, 0, 0.5, ALPHA) is False
    assert quantile_bounds(BOUNDS, [0.0] * len(BOUNDS), 0.5, ALPHA) == (0.0, INF)
    assert quantile_bounds([], [], 0.5, ALPHA) == (0.0, INF)


@pytest.mark.parametrize("n", [1, 5, 30, 200, 5000])
def test_all_or_none_successes(n: int) -> None:
    assert lower_bound(0, n, ALPHA) == 0.0
    assert upper_bound(n, n, ALPHA) == 1.0
    none_high, all_low = upper_bound(0, n, ALPHA), lower_bound(n, n, ALPHA)
    assert none_high == pytest.approx(1 - all_low, abs=1e-9)  # the same bound, mirrored
    if n >= 30:  # enough trials to show something
        assert 0 < none_high < 1 and 0 < all_low < 1
        # never past the fixed-sample exact bound: 1 - alpha^(1/n) for 0 of n
        assert none_high >= 1 - ALPHA ** (1 / n) - 1e-6


def test_extreme_nulls() -> None:
    assert log_e_above(1, 10, 0.0) == INF and log_e_above(0, 10, 0.0) == 0.0
    assert log_e_above(10, 10, 1.0) == -INF
    assert list(log_e_above(np.array([0, 3]), 10, 0.0)) == [0.0, INF]


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_bounds_lie_in_the_unit_interval_around_the_estimate_and_grow_with_successes(
    n: int,
) -> None:
    successes = range(n + 1) if n <= 100 else range(0, n + 1, 7)
    lows = [lower_bound(s, n, ALPHA) for s in successes]
    highs = [upper_bound(s, n, ALPHA) for s in successes]
    for s, low, high in zip(successes, lows, highs, strict=True):
        assert 0.0 <= low <= s / n <= high <= 1.0
    assert lows == sorted(lows) and highs == sorted(highs)  # more successes, higher bounds
    shown = [low for low in lows if low > 0]
    assert shown and all(b > a for a, b in zip(shown, shown[1:], strict=False))


def test_width_shrinks_as_trials_grow_at_a_fixed_share() -> None:
    widths = []
    for n in (10, 100, 1000, 10_000, 100_000):
        s = 0.3 * n
        widths.append(upper_bound(s, n, ALPHA) - lower_bound(s, n, ALPHA))
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < 0.015  # about 4 standard errors wide (sqrt(.21/1e5) = 0.0014) at 1e5
    # and a tighter level (smaller alpha) is wider
    assert upper_bound(300, 1000, 0.001) - lower_bound(300, 1000, 0.001) > widths[2]


def test_quantile_bounds_on_a_small_histogram() -> None:
    bounds = [0.001, 0.002, 0.005, INF]
    # 1000 requests: 100 at 1 ms, 800 more at 2 ms, 100 more at 5 ms
    cumulative = [100, 900, 1000, 1000]
    assert quantile_bounds(bounds, cumulative, 0.5, ALPHA) == (0.001, 0.002)
    # the 0.95 quantile is 5 ms: above 2 ms for sure; at most 5 ms
    assert quantile_bounds(bounds, cumulative, 0.95, ALPHA) == (0.002, 0.005)
    # everything beyond the last finite bound: above it, with no upper bound
    assert quantile_bounds(bounds, [0, 0, 0, 1000], 0.5, ALPHA) == (0.005, INF)
    # ten requests show little: 10 of 10 at or below 5 ms bound the median (e-value 186 > 20),
    # 9 of 10 at or below 2 ms do not, and nothing shows it above 1 ms
    assert quantile_bounds(bounds, [1, 9, 10, 10], 0.5, ALPHA) == (0.0, 0.005)
    assert quantile_bounds(bounds, [1, 5, 6, 6], 0.5, ALPHA) == (0.0, INF)


# -- coverage at every look ---------------------------------------------------------------------------


def three_se(alpha: float, runs: int) -> float:
    """The largest share of ``runs`` a true rate of ``alpha`` gives, but for ~0.1 % of seeds."""
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


def first_success_count(n: int, shows: Callable[[int], bool]) -> int:
    """The smallest s in 0..n for which ``shows(s)`` (n + 1 if none); ``shows`` grows with s."""
    lo, hi = 0, n + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if shows(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


@pytest.mark.parametrize("p", [0.01, 0.2, 0.5])
def test_share_bounds_hold_at_every_look_at_once(p: float) -> None:
    runs = 1000
    successes = np.cumsum(np.random.default_rng(7).random((runs, int(LOOKS[-1]))) < p, axis=1)
    s = successes[:, LOOKS - 1]
    # the bounds grow with s (tested above): per look, the fewest successes that exclude p
    low_from = np.array(
        [first_success_count(n, lambda k, n=n: lower_bound(k, n, ALPHA) > p) for n in LOOKS]
    )
    high_below = np.array(
        [first_success_count(n, lambda k, n=n: upper_bound(n - k, n, ALPHA) < p) for n in LOOKS]
    )  # counted in failures, which push the upper bound down
    ever_low = (s >= low_from).any(axis=1).mean()
    ever_high = (LOOKS - s >= high_below).any(axis=1).mean()
    limit = three_se(ALPHA, runs)  # 0.05 + 3 binomial standard errors over 1000 runs = 0.071
    assert ever_low <= limit and ever_high <= limit, (ever_low, ever_high)
    # the exact fixed-sample bound, looked at the same 45 times, is wrong far more often: the
    # simulation can tell a bound that is not anytime-valid
    cp_low = np.where(s > 0, beta.ppf(ALPHA, np.maximum(s, 1), LOOKS - s + 1), 0.0)
    assert (cp_low > p).any(axis=1).mean() > limit
    # and the bounds are informative by the last look: under 0.08 wide after 3000 trials
    last = int(s[0, -1])
    assert upper_bound(last, LOOKS[-1], ALPHA) - lower_bound(last, LOOKS[-1], ALPHA) < 0.08


@pytest.mark.parametrize("q", [0.5, 0.99])
def test_quantile_bounds_hold_at_every_look_at_once(q: float) -> None:
    runs = 400  # each look is a call: 400 x 45 looks keeps this a few seconds
    latency = lognorm(s=0.6, scale=0.0123)  # median 12.3 ms, log-normal like a model service
    # the quantile of bucketed values: the smallest bound below which a share q falls
    # (p50: 12.5 ms, CDF 0.511; p99: 50 ms, CDF 0.9903, a hair over q: the lower bound's worst case)
    true = BOUNDS[int(np.argmax(latency.cdf(np.asarray(BOUNDS)) >= q))]
    rng = np.random.default_rng(11)
    wrong_low = wrong_high = finite_at_end = 0
    for _ in range(runs):
        bucket = np.searchsorted(BOUNDS, latency.rvs(int(LOOKS[-1]), random_state=rng))
        each = np.zeros((int(LOOKS[-1]), len(BOUNDS)), dtype=np.int32)
        each[np.arange(int(LOOKS[-1])), bucket] = 1
        cumulative = np.cumsum(np.cumsum(each, axis=0), axis=1)[LOOKS - 1]
        found = [quantile_bounds(BOUNDS, row, q, ALPHA) for row in cumulative]
        wrong_low += any(low >= true for low, _ in found)  # shown above the true quantile
        wrong_high += any(high < true for _, high in found)  # shown below it
        finite_at_end += 0 < found[-1][0] < found[-1][1] < INF
    limit = three_se(ALPHA, runs)  # 0.05 + 3 binomial standard errors over 400 runs = 0.083
    assert wrong_low / runs <= limit and wrong_high / runs <= limit, (wrong_low, wrong_high)
    assert finite_at_end / runs >= 0.95  # not vacuous: 3000 requests bound the quantile


# -- means of unbounded values (absolute errors) ---------------------------------------------------


def test_the_mean_radius_is_where_robbins_normal_mixture_reaches_one_over_alpha() -> None:
    # the mixture of exp(l S - l^2 n s^2 / 2) over l ~ N(0, rho^2), integrated numerically, equals
    # 1/alpha exactly at S = n * radius (Robbins 1970; Howard et al. 2021, Proposition 6)
    n, variance, t_star = 400, 2.5, 100
    rho = mixture_rho(ALPHA, t_star)
    sd = math.sqrt(variance)
    edge = n * mean_radius(n, variance, ALPHA, t_star) / sd  # the boundary for unit variance

    def mixture_at(s: float) -> float:
        return quad(lambda lam: math.exp(lam * s - lam * lam * n / 2)
                    * math.exp(-lam * lam / (2 * rho * rho)) / (rho * math.sqrt(2 * math.pi)),
                    -5, 5, points=[s / n])[0]

    assert mixture_at(edge) == pytest.approx(1 / ALPHA, rel=1e-6)
    assert mixture_at(0.99 * edge) < 1 / ALPHA < mixture_at(1.01 * edge)


def test_the_mean_bounds_narrow_around_the_mean_and_open_without_samples() -> None:
    assert mean_bounds(5.0, 30.0, 1, ALPHA, 100) == (-INF, INF)
    widths = [mean_bounds(1.0 * n, 2.0 * n, n, ALPHA, 100) for n in (50, 500, 5000)]
    assert all(low < 1.0 < high for low, high in widths)
    assert [h - lo for lo, h in widths] == sorted((h - lo for lo, h in widths), reverse=True)
    assert widths[-1][1] - widths[-1][0] < 0.2


@pytest.mark.parametrize(("name", "draw", "mean"), [
    ("half-normal", lambda rng, n: np.abs(rng.normal(0.0, 1.0, n)), math.sqrt(2 / math.pi)),
    ("exponential", lambda rng, n: rng.exponential(1.0, n), 1.0),
    ("log-normal", lambda rng, n: rng.lognormal(0.0, 1.0, n), math.exp(0.5)),
])
def test_mean_bounds_of_absolute_errors_hold_at_every_look_at_once(
    name: str, draw: Callable[[np.random.Generator, int], np.ndarray], mean: float
) -> None:
    runs = 1000
    looks = np.unique(np.geomspace(30, 3000, 40).astype(int))
    rng = np.random.default_rng(3)
    wrong_low = wrong_high = fixed_wrong = 0
    for _ in range(runs):
        x = draw(rng, int(looks[-1]))
        total, squares = np.cumsum(x)[looks - 1], np.cumsum(x * x)[looks - 1]
        found = [mean_bounds(t, q, n, ALPHA, 100) for t, q, n in zip(total, squares, looks,
                                                                       strict=True)]
        wrong_low += any(low > mean for low, _ in found)
        wrong_high += any(high < mean for _, high in found)
        # a one-sided fixed-sample interval looked at 40 times: not anytime-valid
        m = total / looks
        sd = np.sqrt(np.maximum(squares / looks - m * m, 0.0))
        fixed_wrong += bool((m + 1.645 * sd / np.sqrt(looks) < mean).any())
    limit = three_se(ALPHA, runs)  # 0.071
    assert wrong_low / runs <= limit and wrong_high / runs <= limit, (name, wrong_low, wrong_high)
    assert fixed_wrong / runs > limit, (name, fixed_wrong)
