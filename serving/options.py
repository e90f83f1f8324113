"""Which of the worker's optimisations are on: ``SERVING_OPTIMISATIONS``, read and checked at start.

Unset or ``all``: every one (the product's setting). ``none``: none, gunicorn's gevent handler as
it is. A comma-separated list of names: only those; of ``-name`` items: all but those. Two exist,
``header_reader`` and ``one_write``; the header reader is also the reader that refuses header
bytes RFC 9110 does not allow, so switching it off is for measuring only. The benchmark
(``loadtest/bench_serving.py``) switches each off in turn to show what it is worth.

    >>> sorted(optimisations({"SERVING_OPTIMISATIONS": "-header_reader"}))
    ['one_write']
"""

from __future__ import annotations

from collections.abc import Mapping

from common.config import ConfigError, env_str
from serving.handler import OPTIMISATIONS

VARIABLE = "SERVING_OPTIMISATIONS"


def optimisations(env: Mapping[str, str]) -> frozenset[str]:
    """The optimisations ``env`` switches on; :class:`ConfigError` naming the variable if unusable."""
    raw = env_str(env, VARIABLE, "all") or "all"
    known = frozenset(OPTIMISATIONS)
    if raw.lower() == "all":
        return known
    if raw.lower() == "none":
        return frozenset()
    items = [item.strip() for item in raw.split(",") if item.strip()]
    names = [item.removeprefix("-") for item in items]
    unknown = sorted(set(names) - known)
    if unknown:
        raise ConfigError(f"{VARIABLE}={raw!r} names unknown optimisations {unknown}; "
                          f"known: {', '.join(OPTIMISATIONS)} (or all, none)")
    negated = [item.startswith("-") for item in items]
    if any(negated) and not all(negated):
        raise ConfigError(f"{VARIABLE}={raw!r} mixes names and -names; give the ones to switch on "
                          "(header_reader,one_write) or the ones to switch off (-one_write)")
    return known - set(names) if all(negated) else frozenset(names)
