"""``make bench``: every benchmark of the project, printed as one combined table.

    python -m loadtest.bench [--quick]

Runs the model-service table, the router table, and the cost of the router's per-request metrics
(two routers in front of the same v1 service, metrics on and off, wrk interleaved in rounds).
"""

from __future__ import annotations

import argparse
from typing import Any

from loadtest import bench_model_service, bench_router
from loadtest.bench_router import _cpu_per_request
from loadtest.harness import (
    Proc, ensure_artifacts, free_port, median, model_service, router, sample_body, table, wrk,
)


def metrics_cost(quick: bool = False) -> list[dict[str, Any]]:
    """Throughput with request metrics on against off; target: metrics cost at most 3%."""
    ensure_artifacts()
    rounds, seconds = (4, 2) if quick else (10, 3)
    body = sample_body(1)
    procs: list[Proc] = []
    try:
        v1 = model_service("v1", free_port(), workers=2)
        procs.append(v1)
        on = router(free_port(), {"v1": v1.url}, workers=1)
        procs.append(on)
        off = router(free_port(), {"v1": v1.url}, workers=1, ROUTER_REQUEST_METRICS="false")
        procs.append(off)
        wrk(on.url, body, 1)
        wrk(off.url, body, 1)
        with_metrics: list[tuple[float, float]] = []
        without: list[tuple[float, float]] = []
        for i in range(rounds):
            order = [(on, with_metrics), (off, without)]
            for proc, sink in order if i % 2 == 0 else reversed(order):
                sink.append(_cpu_per_request(proc, proc.url, body, seconds))
    finally:
        for proc in reversed(procs):
            proc.stop()
    rps_on, rps_off = median([r for r, _ in with_metrics]), median([r for r, _ in without])
    cpu_on, cpu_off = median([c for _, c in with_metrics]), median([c for _, c in without])
    # The pair is throughput-bound by the model service, so the router's own capacity is read
    # from its CPU per request: the throughput it could sustain falls by 1 - cpu_off / cpu_on.
    # Paired: each round measures both back to back (order alternating), so a drift of the
    # machine's speed between rounds cancels; the median of the per-round costs is reported.
    cost = median([1 - off_c / on_c for (_, on_c), (_, off_c) in zip(with_metrics, without, strict=True)])
    return [
        {"measure": "router throughput, request metrics on / off (wrk -c4, median of rounds)",
         "value": f"{rps_on:.0f} / {rps_off:.0f} req/s"},
        {"measure": "router CPU per request, request metrics on / off",
         "value": f"{cpu_on * 1e3:.3f} / {cpu_off * 1e3:.3f} ms"},
        {"measure": "router capacity cost of request metrics (1 - CPU off / CPU on, median of "
                    f"{rounds} paired rounds)",
         "value": f"{cost:.1%}", "target": "<= 3%", "verdict": "PASS" if cost <= 0.03 else "FAIL"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter rounds")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for name, run in (("model service", bench_model_service.run), ("router", bench_router.run),
                      ("metrics", metrics_cost)):
        print(f"running the {name} benchmark ...", flush=True)
        rows += [{**row, "measure": f"{name}: {row['measure']}"} for row in run(quick=args.quick)]
    print(table(rows))


if __name__ == "__main__":
    main()
