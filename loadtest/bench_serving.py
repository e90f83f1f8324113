"""What each optimisation of the worker class is worth: CPU per request and p50, each switched off.

    python -m loadtest.bench_serving [--quick]

Both services run on the worker class, so both are measured: one model service (v1, one worker)
per configuration, all at once: the worker class as is, with each optimisation switched off in
turn (``SERVING_OPTIMISATIONS=-name``), and with none; then one router (one worker) per
configuration, all forwarding to one model service as is. Each round measures every
configuration back to back in a rotating order: CPU per request under wrk (4 connections,
``POST /predict`` of one row; CPU of the server's processes, as ``bench_router`` counts it) and
p50 at concurrency 1 (wrk). Reported: the median over the rounds with the range, and the cost of
switching an item off as the median of its per-round ratios to the configuration as is (paired,
so a drift of the machine's speed cancels). An item pays when switching it off cost CPU in every
round.
"""

from __future__ import annotations

import argparse

from loadtest.bench_router import _cpu_per_request
from loadtest.harness import (
    Proc, ensure_artifacts, free_port, median, model_service, router, sample_body, start_together,
    stop_together, wrk, wrk_latency,
)
from serving.handler import OPTIMISATIONS

AS_IS = "as is"


def configurations() -> dict[str, str]:
    """Name -> SERVING_OPTIMISATIONS value."""
    return {AS_IS: "all", **{f"-{name}": f"-{name}" for name in OPTIMISATIONS}, "none": "none"}


ROLES = ("model service", "router")


def measure(role: str, quick: bool = False) -> dict[str, dict[str, list[float]]]:
    """Per configuration of ``role``'s server: per-round CPU seconds per request and p50 seconds."""
    ensure_artifacts()
    rounds, seconds, lat_seconds = (3, 1, 1) if quick else (7, 3, 2)
    body = sample_body(1)
    configs = configurations()
    procs: list[Proc] = []
    upstream: list[Proc] = []
    try:
        if role == "router":
            upstream = [model_service("v1", free_port(), workers=1)]

            def start(value: str) -> Proc:
                return router(free_port(), {"v1": upstream[0].url}, workers=1,
                              SERVING_OPTIMISATIONS=value)
        else:
            def start(value: str) -> Proc:
                return model_service("v1", free_port(), workers=1, SERVING_OPTIMISATIONS=value)
        procs = start_together(*[(lambda value=value: start(value)) for value in configs.values()])
        servers = dict(zip(configs, procs, strict=True))
        for proc in procs:  # warm up: imports, first predictions, connection set-up
            wrk(proc.url, body, 1)
        results: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "p50": []} for name in configs}
        names = list(configs)
        for i in range(rounds):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                proc = servers[name]
                results[name]["cpu"].append(_cpu_per_request(proc, proc.url, body, seconds)[1])
            for name in order:
                results[name]["p50"].append(wrk_latency(servers[name].url, "/predict", body, lat_seconds)[0])
    finally:
        stop_together(procs + upstream, quick=True)
    return results


def rows(role: str, results: dict[str, dict[str, list[float]]]) -> list[dict[str, str]]:
    base = results[AS_IS]
    out = []
    for name, got in results.items():
        cpu_ratios = [off / on for off, on in zip(got["cpu"], base["cpu"], strict=True)]
        p50_ratios = [off / on for off, on in zip(got["p50"], base["p50"], strict=True)]
        row = {
            "server": role,
            "configuration": name,
            "CPU/request ms, median (range)": _span(got["cpu"], 1e3, 3),
            "CPU vs as is, median (range)": "" if name == AS_IS else _ratios(cpu_ratios),
            "p50 ms, median (range)": _span(got["p50"], 1e3, 3),
            "p50 vs as is, median (range)": "" if name == AS_IS else _ratios(p50_ratios),
            "pays": "",
        }
        if name.startswith("-"):
            row["pays"] = "yes" if min(cpu_ratios) > 1 else "no (within noise)"
        out.append(row)
    return out


def _span(values: list[float], scale: float, digits: int) -> str:
    return (f"{median(values) * scale:.{digits}f} "
            f"({min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f})")


def _ratios(ratios: list[float]) -> str:
    return f"{median(ratios) - 1:+.1%} ({min(ratios) - 1:+.1%}..{max(ratios) - 1:+.1%})"


def table(found: list[dict[str, str]]) -> str:
    cols = list(found[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(row[c] for c in cols) + " |" for row in found]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    print(table([row for role in ROLES for row in rows(role, measure(role, quick=args.quick))]))


if __name__ == "__main__":
    main()
