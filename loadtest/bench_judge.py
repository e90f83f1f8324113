"""The judge under simulated rollouts: the anytime-valid judge beside the fixed-margin one.

Both run through the same controller (``router.rollout``) and simulator (``router.simulate``)
on the same seeded traffic, over a grid of base error rates, traffic and candidate effects, with
the plan the issue's targets name (canary steps 10, 25, 50, 100; 30 s analyses; defaults).

    python -m loadtest.bench_judge [--runs 200] [--seed 0]

"good rolled back" is the share of candidates exactly as good as stable that were rolled back;
"bad caught by 50 %" the share of harmful ones rolled back before their traffic passed 50 %.
"""

from __future__ import annotations

import argparse
import sys
import time

from loadtest.fixed_margin_judge import fixed_margin_analyse
from router.simulate import Traffic, plan_for, simulate
from router.rollout_step import analyse

BASE_ERRORS = (0.0, 0.01, 0.05)
RATES = (5.0, 20.0, 200.0)
EFFECTS = {"none": (0.0, 1.0), "+10 points of errors": (0.10, 1.0), "2x latency": (0.0, 2.0)}
JUDGES = {"anytime-valid": analyse, "fixed margin (before)": fixed_margin_analyse}


def rows(runs: int, seed: int) -> list[list[str]]:
    plan = plan_for({"strategy": "canary", "steps": [10, 25, 50, 100], "interval_s": 30})
    out = []
    for base in BASE_ERRORS:
        for rps in RATES:
            for effect, (extra, factor) in EFFECTS.items():
                traffic = Traffic(rps=rps, stable_error_rate=base, candidate_error_rate=base + extra,
                                  candidate_latency_factor=factor)
                for judge_name, fn in JUDGES.items():
                    started = time.perf_counter()
                    s = simulate(plan, traffic, runs, seed=seed, analyse_fn=fn).summary()
                    share = (f"{s['rolled_back']:.1%}" if effect == "none"
                             else f"{s['rolled_back_by_50']:.1%}")
                    out.append([f"{base:.0%}", f"{rps:g}", effect, judge_name, share,
                                f"{s['promoted']:.1%}", f"{s['seconds_p50'] / 60:.1f} / "
                                f"{s['seconds_p95'] / 60:.1f}", f"{s['exposure_p50']:.0f}",
                                f"{time.perf_counter() - started:.1f}"])
                    print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="rollouts per cell (default: 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    header = ["base errors", "req/s", "candidate effect", "judge",
              "good rolled back / bad caught by 50 %", "promoted", "minutes to decision p50 / p95",
              "exposure p50 (requests)", "cell s"]
    print(f"Simulated canary rollouts (steps 10, 25, 50, 100; 30 s analyses; default thresholds), "
          f"{args.runs} runs a cell, seed {args.seed}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows(args.runs, args.seed):
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
