"""Histogram buckets shared by every latency metric: 0.25 ms to 10 s, in seconds.

Twenty bounds a decade, at most 14 % apart (1, 1.1, 1.25, 1.4, 1.6, 1.8, 2, 2.2, 2.5, 2.8, 3.2,
3.5, 4, 4.5, 5, 5.6, 6.3, 7, 8, 9), because a rollout's analysis reads latency quantiles from
them: a quantile is only known to within its bucket, and with coarser buckets a candidate
twice as slow as stable could hide, bucket edges included, under a 1.5x tolerance.
"""

_MANTISSAS = (1.0, 1.1, 1.25, 1.4, 1.6, 1.8, 2.0, 2.2, 2.5, 2.8, 3.2, 3.5, 4.0, 4.5, 5.0, 5.6, 6.3,
              7.0, 8.0, 9.0)

LATENCY_BUCKETS = tuple(
    round(m * 10.0 ** exponent, 7)
    for exponent in range(-4, 1) for m in _MANTISSAS
    if 0.00025 <= m * 10.0 ** exponent < 10.0
) + (10.0,)
