"""Everything one router app owns, hung off ``app.extensions["router"]``."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from metrics.published import CountsPublisher
from metrics.router import RouterMetrics
from router.config import RouterConfig
from router.live_state import LiveState
from metrics.sources import MetricSource
from router.prediction_log import PredictionLog
from router.rollout import RolloutController
from router.shadow import Mirror
from router.slots import SlotVersions
from router.state import StateStore
from router.upstream import UpstreamPool
from strategies import RoutingState


@dataclass
class RouterContext:
    config: RouterConfig
    store: StateStore
    live: LiveState
    pools: dict[str, UpstreamPool]
    metrics: RouterMetrics
    mirror: Mirror
    registry: CollectorRegistry
    source: MetricSource
    controller: RolloutController
    slots: SlotVersions
    publisher: CountsPublisher | None = None  # None when statistics come from Prometheus
    predictions: PredictionLog | None = None  # None when feedback is off
    closed: bool = field(default=False, init=False)

    def close(self) -> None:
        """Stop everything this app owns, in order: the rollout controller, the shadow mirror
        (copies already queued are still sent), the predictions kept for feedback (written), the slot and state refreshers, the publisher of
        this instance's counts (after a last publish), the request tallies (written), the upstream
        connection pools and the state store. Called at worker exit and by tests; a second call
        does nothing.

            >>> app.extensions["router"].close()  # doctest: +SKIP
        """
        if self.closed:
            return
        self.closed = True
        self.controller.stop()
        self.mirror.close()
        if self.predictions is not None:
            self.predictions.close()
        self.slots.close()
        self.live.stop()
        if self.publisher is not None:
            self.publisher.stop()
        self.metrics.close()
        for pool in self.pools.values():
            pool.close()
        self.store.close()

    def weights(self, routing: RoutingState) -> dict[str, int]:
        """Percent of client traffic each configured version answers under ``routing``."""
        weights = dict.fromkeys(self.config.upstreams, 0)
        if routing.strategy == "canary" and routing.candidate:
            weights[routing.candidate] = routing.canary_weight
            weights[routing.stable] = 100 - routing.canary_weight
        else:
            weights[routing.stable] = 100
        return weights
