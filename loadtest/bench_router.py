"""Router benchmark: forwarding cost against nginx, added latency, and shadow isolation.

    python -m loadtest.bench_router [--quick]

Everything is measured side by side in one run, interleaved in rounds, medians reported:
- CPU per forwarded request (router with one worker, the default, and with two, vs nginx in front
  of the same v1 service, wrk, 4 connections), the ratios paired per round with their spread, and
  the share of direct throughput each keeps; for two workers, the rounds split by whether wrk's
  connections landed on both workers or on one, with the model service's own CPU per request in
  each (the machine's cores shared by wrk, the model service and the router's workers: why the
  router's default is one worker, see ``serving.process.ROUTER_WORKERS``);
- p50 added latency at concurrency 1 (router minus direct, wrk);
- client p50 with 100% shadow to a candidate that sleeps 200 ms, against shadow off (medians
  over twice as many rounds as the rest: the difference sought is within one round's noise).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import requests

from loadtest.harness import (
    Proc, ensure_artifacts, free_port, median, model_service, nginx, router, sample_body, table,
    wrk, wrk_latency,
)


def _cpu_per_request(proc: Proc, url: str, body: bytes, seconds: float) -> tuple[float, float]:
    before = proc.cpu_seconds()
    rps = wrk(url, body, seconds)
    spent = proc.cpu_seconds() - before
    return rps, spent / (rps * seconds)


def _two_worker_round(proc: Proc, upstream: Proc, url: str, body: bytes,
                      seconds: float) -> tuple[float, float, float, bool]:
    """One round of the two-worker router: (rps, its CPU/request, the upstream's CPU/request,
    whether both workers served: the busier one spent under 90 % of the workers' CPU)."""
    before, up_before = proc.cpu_by_process(), upstream.cpu_seconds()
    rps = wrk(url, body, seconds)
    after, up_spent = proc.cpu_by_process(), upstream.cpu_seconds() - up_before
    spent = sorted((after[pid] - before.get(pid, 0.0) for pid in after), reverse=True)
    workers = spent[:2]  # the master barely runs
    both = sum(workers) > 0 and workers[0] < 0.9 * sum(workers)
    requests_ = rps * seconds
    return rps, sum(spent) / requests_, up_spent / requests_, both


def _patch(url: str, **fields: Any) -> None:
    resp = requests.patch(url + "/admin/state", json=fields,
                          headers={"Authorization": "Bearer bench"}, timeout=5)
    resp.raise_for_status()


def run(quick: bool = False) -> list[dict[str, Any]]:
    ensure_artifacts()
    rounds, seconds = (2, 2) if quick else (7, 3)
    body = sample_body(1)
    procs: list[Proc] = []
    rows: list[dict[str, Any]] = []
    try:
        v1 = model_service("v1", free_port(), workers=1)
        procs.append(v1)
        slow = model_service("v2", free_port(), workers=1, FAULT_LATENCY_MS="200")
        procs.append(slow)
        rt = router(free_port(), {"v1": v1.url, "v2": slow.url}, workers=1, ROUTER_STRATEGY="shadow")
        procs.append(rt)
        # WEB_CONCURRENCY=2 (the router's default is one worker)
        rt2 = router(free_port(), {"v1": v1.url}, workers=2)
        procs.append(rt2)
        ngx = nginx(free_port(), int(v1.url.rsplit(":", 1)[1]))
        if ngx is not None:
            procs.append(ngx)
        _patch(rt.url, shadow_percent=0)

        results: dict[str, list[tuple[float, float]]] = {
            "direct": [], "nginx": [], "router": [], "router2": []}
        split: list[tuple[float, float, float, bool]] = []
        for _ in range(rounds):
            results["direct"].append(_cpu_per_request(v1, v1.url, body, seconds))
            if ngx is not None:
                results["nginx"].append(_cpu_per_request(ngx, ngx.url, body, seconds))
            results["router"].append(_cpu_per_request(rt, rt.url, body, seconds))
            split.append(_two_worker_round(rt2, v1, rt2.url, body, seconds))
            results["router2"].append(split[-1][:2])
        rps = {k: median([r for r, _ in v]) for k, v in results.items() if v}
        cpu = {k: median([c for _, c in v]) for k, v in results.items() if v}
        rows.append({"measure": "direct to v1: throughput (wrk -c4)", "value": f"{rps['direct']:.0f} req/s"})
        if ngx is not None:
            rows.append({"measure": "nginx -> v1: throughput kept",
                         "value": f"{rps['nginx'] / rps['direct']:.0%} ({rps['nginx']:.0f} req/s)"})
            rows.append({"measure": "nginx CPU per forwarded request", "value": f"{cpu['nginx'] * 1e3:.3f} ms"})
        rows.append({"measure": "router -> v1: throughput kept",
                     "value": f"{rps['router'] / rps['direct']:.0%} ({rps['router']:.0f} req/s)"})
        rows.append({"measure": "router CPU per forwarded request", "value": f"{cpu['router'] * 1e3:.3f} ms"})
        rows.append({"measure": "router (2 workers) CPU per forwarded request",
                     "value": f"{cpu['router2'] * 1e3:.3f} ms"})
        if ngx is not None:
            # paired per round (router and nginx measured back to back), median of the ratios
            for key, label in (("router", "router (1 worker, the default)"),
                               ("router2", "router (2 workers)")):
                ratios = [r[1] / n[1] for r, n in zip(results[key], results["nginx"], strict=True)]
                ratio = median(ratios)
                row = {"measure": f"{label} CPU / nginx CPU, median (min-max of {rounds} rounds)",
                       "value": f"{ratio:.1f}x ({min(ratios):.1f}-{max(ratios):.1f})"}
                if key == "router":
                    row.update(target="<= 5x", verdict="PASS" if ratio <= 5 else "FAIL")
                rows.append(row)

        for both, label in ((False, "one worker served every connection"),
                            (True, "both workers served")):
            chosen = [r for r in split if r[3] is both]
            value = (f"{len(chosen)} of {rounds} rounds" + (
                f": {median([r[0] for r in chosen]):.0f} req/s, router {median([r[1] for r in chosen]) * 1e3:.3f}"
                f" ms, model service {median([r[2] for r in chosen]) * 1e3:.3f} ms" if chosen else ""))
            rows.append({"measure": f"router (2 workers), rounds where {label}: throughput, CPU "
                                    "per request of the router and of the model service behind it",
                         "value": value})

        # c=1 latencies by wrk (a C client: only the servers and the network are measured),
        # direct and through the router in alternation, medians over the rounds.
        lat_seconds = 1 if quick else 2
        wrk_latency(v1.url, "/predict", body, 1)
        wrk_latency(rt.url, "/predict", body, 1)
        direct_p50: list[float] = []
        router_p50: list[float] = []
        for _ in range(rounds):
            direct_p50.append(wrk_latency(v1.url, "/predict", body, lat_seconds)[0])
            router_p50.append(wrk_latency(rt.url, "/predict", body, lat_seconds)[0])
        direct, via = median(direct_p50), median(router_p50)
        added = via - direct
        rows.append({"measure": "p50 direct / via router (wrk, c=1)",
                     "value": f"{direct * 1e3:.3f} / {via * 1e3:.3f} ms"})
        rows.append({"measure": "added p50 latency (router - direct)", "value": f"{added * 1e3:.3f} ms",
                     "target": "<= 0.5 ms", "verdict": "PASS" if added <= 0.0005 else "FAIL"})

        off: list[float] = []
        on: list[float] = []
        # a few per cent of a 0.3 ms p50 is what is measured here, and one round's ratio swings
        # by a fifth either way on two shared cores: more rounds than the others take
        for _ in range(2 * rounds + 1):
            _patch(rt.url, shadow_percent=0)
            time.sleep(0.3)
            off.append(wrk_latency(rt.url, "/predict", body, lat_seconds)[0])
            _patch(rt.url, shadow_percent=100)
            time.sleep(0.3)
            on.append(wrk_latency(rt.url, "/predict", body, lat_seconds)[0])
        p50_on, p50_off = median(on), median(off)
        ratio = p50_on / p50_off
        rows.append({"measure": "client p50 (wrk, c=1), shadow 100% to a 200 ms candidate / shadow off",
                     "value": f"{ratio:.2f}x ({p50_on * 1e3:.3f} / {p50_off * 1e3:.3f} ms)",
                     "target": "<= 1.1x", "verdict": "PASS" if ratio <= 1.1 else "FAIL"})
    finally:
        for proc in reversed(procs):
            proc.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter rounds")
    args = parser.parse_args()
    print(table(run(quick=args.quick)))


if __name__ == "__main__":
    main()
