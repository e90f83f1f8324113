"""The release history: one record per rollout, kept in the state store and written to the log.

A record says what was released (version and slot), how (the plan's strategy), when it started
and ended, its outcome (running, paused, awaiting promotion, promoted, rolled back, aborted) and
why, how many analyses it took, and every config_version it wrote. The store keeps the records
(shared through Redis like the state, surviving router restarts); each one is also written as a
structured log line, so a log drain keeps the history even if the store loses it.

    >>> record = release_record(snapshot)          # doctest: +SKIP
    >>> store.save_release(record)                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.live_state import Snapshot

log = logging.getLogger("router.audit")
ENDED = ("promoted", "rolled_back", "aborted")
ANALYSES = ("wait", "retry", "pass", "advance", "promote", "rollback", "await-promotion",
            "shadow-passed", "switch", "reload", "complete", "abort-not-ready", "abort-reload-failed")


def _why(rollout: dict[str, Any]) -> str | None:
    """Why a rollout ended as it did: its error, or the checks of its last decision that failed."""
    if rollout.get("error"):
        return str(rollout["error"])
    decisions = rollout.get("decisions") or []
    if not decisions:
        return None
    last = decisions[-1]
    failed = [c for c in last.get("checks") or [] if c.get("decision") == "fail"]
    if failed:
        return "; ".join(f"{c['name']} {c.get('value')} (limit {c.get('threshold')})"
                         for c in failed)
    return str(last.get("action"))


def release_record(snapshot: Snapshot) -> dict[str, Any] | None:
    """The release record of the snapshot's rollout (None when there is none)."""
    rollout = snapshot.rollout
    if not rollout or "id" not in rollout:
        return None
    plan = rollout.get("plan") or {}
    release = rollout.get("release") or {}
    versions = rollout.get("versions") or {}
    stable_before = rollout.get("stable_at_start")
    status = rollout.get("status")
    ended = status in ENDED
    return {
        "id": rollout["id"],
        "version": release.get("version"),
        "slot": release.get("slot"),
        "strategy": plan.get("strategy"),
        "stable_before": {"slot": stable_before, "version": versions.get(stable_before)},
        "started_at": rollout.get("started_at"),
        "ended_at": rollout.get("updated_at") if ended else None,
        "outcome": status,
        "why": _why(rollout) if ended else None,
        "analyses": sum(1 for d in rollout.get("decisions") or [] if d.get("action") in ANALYSES),
        "config_versions": list(rollout.get("config_versions") or []),
    }


def log_release(record: dict[str, Any]) -> None:
    log.info(json.dumps({"release": record}, sort_keys=True, default=str))


def log_event(config_version: int, event: dict[str, Any]) -> None:
    log.info(json.dumps({"audit_event": {**event, "config_version": config_version}},
                        sort_keys=True, default=str))


def keep_audit_lines() -> None:
    """Let the structured audit lines reach stderr where nobody configured logging.

    gunicorn configures only its own loggers, so without this the ``router.audit`` lines (the
    history that outlives a store that forgets) would be dropped at INFO. Logging configured by
    the application (a handler on the root or on ``router.audit``) is left as it is.
    """
    audit = logging.getLogger("router.audit")
    if audit.hasHandlers():
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))  # the line is the JSON record
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)
    audit.propagate = False
