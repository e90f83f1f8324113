"""A short comparison end to end: the report must agree with Locust's CSVs and the request logs.

Runs blue-green and canary on the good and bad-errors scenarios (one report) and a restart in
place on the good scenario (a second report), a few seconds per phase, then recomputes every
number of the reports from the raw files with code independent of ``loadtest.compare_measures``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest.harness import ROOT, ensure_artifacts

pytestmark = pytest.mark.slow

SHORT = ["--seconds-per-phase", "2", "--users", "20", "--interval-s", "1", "--min-requests", "10"]
TITLES = {"blue-green": "blue-green", "canary": "canary", "restart": "release-in-place (restart)"}


def _compare(out: Path, scenarios: str, strategies: str) -> subprocess.Popen[str]:
    """Start one comparison run; ``_finished`` waits for it."""
    return subprocess.Popen(
        [sys.executable, "-m", "loadtest.compare", *SHORT, "--out", str(out),
         "--scenarios", scenarios, "--strategies", strategies],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finished(run: subprocess.Popen[str]) -> None:
    try:
        _, stderr = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr[-4000:]
    assert "before:" in stderr and "done" in stderr  # progress lines were shown


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """(scenario, strategy) -> folder holding report.md and csv/<scenario>/<strategy>/."""
    ensure_artifacts()
    routed = tmp_path_factory.mktemp("compare-routed")
    restart = tmp_path_factory.mktemp("compare-restart")
    # the two runs use ports of their own and measure nothing against the clock, so they overlap
    quality = tmp_path_factory.mktemp("compare-quality")
    started = [_compare(routed, "good,bad-errors", "blue-green,canary"), _compare(restart, "good", "restart"),
               _compare(quality, "bad-quality,bad-quality-checked", "canary")]
    for run in started:
        _finished(run)
    folders = {(s, r): routed for s in ("good", "bad-errors") for r in ("blue-green", "canary")}
    folders[("good", "restart")] = restart
    folders.update({(s, "canary"): quality for s in ("bad-quality", "bad-quality-checked")})
    return folders


def report_rows(report: str) -> dict[tuple[str, str], dict[str, str]]:
    """(scenario, strategy title) -> {column: cell} from each scenario's first table of report.md
    (the one of service measures; the quality table follows it)."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    scenario, header, read = "", None, False
    for line in report.splitlines():
        heading = re.match(r"## Scenario ([\w-]+):", line)
        if heading:
            scenario, header, read = heading.group(1), None, False
            continue
        if header is not None and not line.startswith("|"):
            read = True  # the first table ended
        if not scenario or read or not line.startswith("|") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
        else:
            rows[(scenario, cells[0])] = dict(zip(header, cells, strict=True))
    return rows


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def raw(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, tuple[int, int]]]:
    """The request log, the timeline and Locust's final totals of one run."""
    with (folder / "requests.csv").open(newline="") as handle:
        requests = list(csv.DictReader(handle))
    timeline = json.loads((folder / "timeline.json").read_text())
    with (folder / "locust_stats.csv").open(newline="") as handle:
        locust = {r["Name"]: (int(r["Request Count"]), int(r["Failure Count"]))
                  for r in csv.DictReader(handle)}
    return requests, timeline, locust


def recompute(requests: list[dict[str, Any]], t: dict[str, Any]) -> dict[str, str]:
    """The report's cells, computed again from the raw files."""
    settled = t["decided"] or t["full_release"] or t["ended"]
    until = t["decided"] or t["ended"]
    phases: dict[str, list[dict[str, Any]]] = {"before": [], "during": [], "after": []}
    for r in requests:
        start = float(r["start_time"])
        phase = "before" if start < t["release"] else "during" if start < settled else "after"
        phases[phase].append(r)

    def candidate_answered(r: dict[str, Any]) -> bool:
        start = float(r["start_time"])
        if r["failed"] == "0":
            return bool(r["model_version"] == t["candidate"])
        if not t["in_place"]:
            return bool(r["version"] == t["candidate"])
        end = t["rollback"] or until
        return (t["exposure_from"] is not None and t["exposure_from"] <= start < end
                and r["version"] == t["stable"] and r["status"] != "502")

    window = [r for r in requests if t["release"] <= float(r["start_time"]) < until]
    hits = [r for r in window if candidate_answered(r)]
    failed = sum(r["failed"] == "1" for r in requests)
    cells = {
        "requests": str(len(requests)),
        "failed": f"{failed} ({100 * failed / len(requests):.2f} %)",
        "failed before / during / after": " / ".join(
            str(sum(r["failed"] == "1" for r in rows)) for rows in phases.values()),
        "exposure before the decision": f"{len(hits)} of {len(window)}"
                                        + (f" ({100 * len(hits) / len(window):.1f} %)" if window else ""),
        "users exposed": f"{len({r['user'] for r in hits})} of {len({r['user'] for r in requests})}",
    }
    for column, phase in (("latency before (ms p50 / p95 / p99)", "before"), ("during", "during"),
                          ("after", "after")):
        times = [float(r["response_time_ms"]) for r in phases[phase]]
        cells[column] = " / ".join(f"{nearest_rank(times, q):.1f}" for q in (0.5, 0.95, 0.99)) if times else "—"
    return cells


def test_report_numbers_equal_the_ones_recomputed_from_the_csvs(runs: dict[tuple[str, str], Path]) -> None:
    for (scenario, strategy), out in runs.items():
        rows = report_rows((out / "report.md").read_text())
        row = rows[(scenario, TITLES[strategy])]
        requests, timeline, locust = raw(out / "csv" / scenario / strategy)
        assert len(requests) > 100, (scenario, strategy)
        for column, expected in recompute(requests, timeline).items():
            assert row[column] == expected, (scenario, strategy, column)
        # Locust's own totals, per version and in all, agree with the request log and the report
        failed = sum(r["failed"] == "1" for r in requests)
        predictions = [totals for name, totals in locust.items() if name.startswith("predict")]
        assert (sum(n for n, _ in predictions), sum(f for _, f in predictions)) \
            == (len(requests), failed) == (int(row["requests"]), int(row["failed"].split()[0]))
        for name, (count, failures) in locust.items():
            if name.startswith("predict"):
                version = name.removeprefix("predict [").removesuffix("]")
                ours = [r for r in requests if r["version"] == version]
                assert (count, failures) == (len(ours), sum(r["failed"] == "1" for r in ours)), name


def test_blue_green_fails_no_request_across_the_switch(runs: dict[tuple[str, str], Path]) -> None:
    out = runs[("good", "blue-green")]
    row = report_rows((out / "report.md").read_text())[("good", "blue-green")]
    requests, timeline, locust = raw(out / "csv" / "good" / "blue-green")
    assert timeline["full_release"] is not None, "the switch to v2 never happened"
    after_switch = [r for r in requests if float(r["start_time"]) >= timeline["full_release"]]
    assert any(r["model_version"] == "v2" for r in after_switch)
    assert locust["Aggregated"][1] == 0
    assert row["failed"].startswith("0 ")


def test_bad_canary_exposes_less_than_its_weight_and_rolls_back(runs: dict[tuple[str, str], Path]) -> None:
    out = runs[("bad-errors", "canary")]
    row = report_rows((out / "report.md").read_text())[("bad-errors", "canary")]
    requests, timeline, _ = raw(out / "csv" / "bad-errors" / "canary")
    assert row["outcome"].startswith("rolled back"), row["outcome"]
    exposure, sent = (int(n) for n in re.match(r"(\d+) of (\d+)", row["exposure before the decision"]).groups())
    assert timeline["max_weight"] is not None
    assert 0 < exposure < timeline["max_weight"] / 100 * sent
    late = [r for r in requests if float(r["start_time"]) > timeline["decided"] + 1.0]
    assert late and not any(r["version"] == "v2" for r in late), "v2 still answered after the rollback"


def test_restart_in_place_serves_v2_after_the_restart(runs: dict[tuple[str, str], Path]) -> None:
    out = runs[("good", "restart")]
    row = report_rows((out / "report.md").read_text())[("good", TITLES["restart"])]
    requests, timeline, _ = raw(out / "csv" / "good" / "restart")
    assert row["to 100 % v2"].endswith(" s")
    ready = timeline["full_release"]
    after = [r for r in requests if float(r["start_time"]) > ready + 1.0]
    assert after and all(r["model_version"] == "v2" for r in after if r["failed"] == "0")
    assert (out / "plots" / "good-restart.png").stat().st_size > 10_000


def test_quality_check_rolls_back_the_worse_model_that_service_metrics_promote(
        runs: dict[tuple[str, str], Path]) -> None:
    out = runs[("bad-quality", "canary")]
    report = (out / "report.md").read_text()
    blind = report_rows(report)[("bad-quality", "canary")]
    checked = report_rows(report)[("bad-quality-checked", "canary")]
    assert blind["outcome"] == "promoted"
    assert checked["outcome"].startswith("rolled back (accuracy_drop"), checked["outcome"]
    for scenario in ("bad-quality", "bad-quality-checked"):
        requests, _, locust = raw(out / "csv" / scenario / "canary")
        assert locust["feedback"][0] > 0 and locust["feedback"][1] == 0  # labels sent, all taken
        # the quality table's share per version, recomputed from the request log
        rows: dict[str, list[int]] = {}
        for r in requests:
            if r["correct"]:
                n = rows.setdefault(r["model_version"], [0, 0])
                n[0] += int(r["rows"])
                n[1] += int(r["correct"])
        shares = {v: right / n for v, (n, right) in rows.items()}
        assert shares["v1"] - shares["v2"] > 0.1, shares  # v2 clearly worse
        section = report.split(f"## Scenario {scenario}:")[1].split("\n## ")[0]
        cells = [line for line in section.splitlines()
                 if line.startswith("| canary |") and "% of" in line]
        expected = "; ".join(f"{v} {100 * right / n:.1f} % of {n}" for v, (n, right) in sorted(rows.items()))
        assert len(cells) == 1 and expected in cells[0], (expected, cells)
