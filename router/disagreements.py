"""Disagreement analytics on live traffic: every compared shadow copy tallied in the state store.

The mirror's workers hand each compared answer to :meth:`DisagreementRecorder.record`, off the
request path. The store adds the pair's counts and keeps a capped, expiring sample of the rows
that disagreed, which every worker and router instance then reads alike.

    >>> mirror.record_disagreements = DisagreementRecorder(store, keep=100).record  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from metrics.disagreement import tally_pair
from router.shadow import MirrorJob
from router.state import StateStore, StateStoreError

log = logging.getLogger(__name__)
_WARN_EVERY_S = 60.0


class DisagreementRecorder:
    """Writes each compared request's tally and disagreeing rows to the state store."""

    def __init__(self, store: StateStore, keep: int, retention_s: float) -> None:
        self.store = store
        self.keep = keep
        self.retention_s = retention_s
        self.failures = 0
        self._warned_at = float("-inf")

    def record(self, job: MirrorJob, candidate: str, candidate_body: bytes) -> None:
        """Tally the candidate's answer to ``job`` against stable's; a store outage is logged
        (once a minute) and the tally lost, never raised into the mirror."""
        tally = tally_pair(job.body, job.stable_body, candidate_body, job.tolerance.agrees,
                           self.keep)
        if tally is None:
            return
        request_id = next((v for n, v in job.headers if n.lower() == "x-request-id"), None)
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        samples = [{"request_id": request_id, "time": now, "stable": job.stable,
                    "candidate": candidate, **sample} for sample in tally.samples]
        try:
            self.store.record_disagreements(job.stable, candidate, tally.counts, samples,
                                            self.keep, self.retention_s)
        except StateStoreError as exc:
            self.failures += 1
            if time.monotonic() - self._warned_at >= _WARN_EVERY_S:
                self._warned_at = time.monotonic()
                log.warning("disagreement tally of %s against %s not recorded (%d so far): %s",
                            candidate, job.stable, self.failures, exc)
