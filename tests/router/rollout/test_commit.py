"""The controller counts a decision in ``router_rollout_decisions_total`` only once recorded.

An operator's pause, resume or rollback can land between the controller's analysis and its
compare-and-set; the step is then dropped, and so is its count, so the counter and the rollout's
``decisions`` agree (a real LiveState on SQLite, the router's real metrics).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from metrics.analysis import Verdict
from metrics.router import RouterMetrics
from router.config import RouterConfig
from router.live_state import LiveState
from router.rollout import RolloutController
from router.rollout_step import Step
from router.state.sqlite import SQLiteStateStore

CONFIG = RouterConfig(upstreams={"v1": "http://127.0.0.1:9", "v2": "http://127.0.0.1:10"},
                      stable="v1", candidate="v2", strategy="canary")
ROLLOUT = {"id": "r-1", "status": "running", "phase": "canary", "step": 0,
           "plan": {"strategy": "canary", "steps": [30, 100]}, "started_at": 100.0,
           "release": {"version": "v2", "slot": "v2"}, "decisions": []}


def _counted(registry: CollectorRegistry, decision: str) -> float:
    value = registry.get_sample_value("router_rollout_decisions_total", {"decision": decision})
    return value or 0.0


def test_a_step_the_rollout_moved_past_is_neither_recorded_nor_counted(tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "state.db")
    try:
        live = LiveState(CONFIG, store)
        live.change(lambda s: replace(s, rollout=ROLLOUT), actor="admin", action="rollout.start",
                    reason=None)
        registry = CollectorRegistry()
        controller = RolloutController(live, None, {}, RouterMetrics(registry), None,  # type: ignore[arg-type]
                                       None)  # type: ignore[arg-type]
        wait = Step("wait", {}, verdict=Verdict("wait", ()))

        seen = dict(live.current.rollout or {})
        controller._commit(seen, wait, 200.0)  # recorded: counted
        assert len(live.current.rollout["decisions"]) == 1
        assert _counted(registry, "wait") == 1

        # an operator pauses it between the analysis and the write
        live.change(lambda s: replace(s, rollout={**s.rollout, "status": "paused"}), actor="admin",
                    action="rollout.pause", reason=None)
        controller._commit(seen, wait, 201.0)
        assert live.current.rollout["status"] == "paused"
        assert len(live.current.rollout["decisions"]) == 1
        assert _counted(registry, "wait") == 1
    finally:
        store.close()
