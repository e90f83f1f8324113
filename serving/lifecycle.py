"""What an app asks to have done when its worker process exits (gunicorn's ``worker_exit``).

An app that owns threads, pools or store connections registers its ``close`` when it is built
in a worker; the serving layer's ``worker_exit`` hook calls every registered function, newest
first, so an app never needs to know which server runs it.

    >>> at_worker_exit(lambda: None)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

_CLOSERS: list[Callable[[], None]] = []


def at_worker_exit(close: Callable[[], None]) -> None:
    """Call ``close`` when this worker process exits."""
    _CLOSERS.append(close)


def run_worker_exit() -> None:
    """Call every registered function once, newest first; one failing does not stop the rest."""
    while _CLOSERS:
        close = _CLOSERS.pop()
        try:
            close()
        except Exception:
            log.exception("closing an app at worker exit failed")
