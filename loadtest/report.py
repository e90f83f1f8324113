"""The comparison report: markdown tables per scenario and PNG timelines, from a run folder's CSVs.

    python -m loadtest.report comparison                             # re-render comparison/report.md
    python -m loadtest.report comparison --publish docs/comparison   # report, plots, small raw files

``loadtest.compare`` calls :func:`render` at the end of a run; this command renders again from
the same files (``comparison.json``, and per run ``timeline.json``, ``requests.csv`` and
Locust's CSVs), for instance into a documentation folder. Publishing copies the raw files too
when they fit under ``--raw-limit-mb`` (default 1); what is left out is said in the report.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest.compare_measures import (
    LOCUST_PREFIX,
    PHASES,
    REQUEST_LOG,
    TIMELINE,
    Measures,
    Quality,
    Timeline,
    measure,
    quality,
    read_locust_totals,
    read_requests,
    series,
)
from loadtest.compare_release import RELEASES, SCENARIOS, THRESHOLDS, Release

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MANIFEST = "comparison.json"
FINDINGS = "findings.md"
RAW_KINDS = (  # published in this order while they fit
    ("Locust's final statistics", f"{LOCUST_PREFIX}_stats.csv"),
    ("Locust's failures", f"{LOCUST_PREFIX}_failures.csv"),
    ("Locust's exceptions", f"{LOCUST_PREFIX}_exceptions.csv"),
    ("timelines (release, decisions, routing state changes)", TIMELINE),
    ("Locust's per-second history (--csv-full-history)", f"{LOCUST_PREFIX}_stats_history.csv"),
    ("request logs (one row per request)", REQUEST_LOG),
)
COLUMNS = ("strategy", "outcome", "requests", "failed", "failed before / during / after",
           "exposure before the decision", "users exposed", "to 100 % v2", "to rollback",
           "latency before (ms p50 / p95 / p99)", "during", "after")


QUALITY_COLUMNS = ("strategy", "outcome", "right answers per version", "wrong rows during / after",
                   "labels sent (failed)", "the decision's quality check")


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def _latency(value: tuple[float, float, float] | None) -> str:
    return "—" if value is None else " / ".join(f"{v:.1f}" for v in value)


def table_row(title: str, timeline: Timeline, m: Measures) -> list[str]:
    """The cells of one strategy's row, in COLUMNS order."""
    share = f"{100 * m.failed / m.requests:.2f} %" if m.requests else "—"
    exposure_share = (f" ({100 * m.exposure / m.sent_before_decision:.1f} %)"
                      if m.sent_before_decision else "")
    return [
        title, timeline.outcome, str(m.requests), f"{m.failed} ({share})",
        " / ".join(str(m.failed_by_phase[p]) for p in PHASES),
        f"{m.exposure} of {m.sent_before_decision}{exposure_share}",
        f"{m.users_exposed} of {m.users}",
        _seconds(m.time_to_full_release), _seconds(m.time_to_rollback),
        *(_latency(m.latency_ms[p]) for p in PHASES),
    ]


def _quality_check(timeline: Timeline) -> str:
    """The last analysis's quality check: the drop with its interval, or why there was none."""
    for decision in reversed(timeline.decisions):
        for check in decision.get("checks", []):
            if check.get("name") in ("accuracy_drop", "mae_increase"):
                low, high = check.get("interval") or (None, None)
                bounds = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
                value = "—" if check.get("value") is None else f"{check['value']:.3f}"
                return (f"{check['name']} {value}{bounds} against "
                        f"{check['threshold']}: {check['decision']}")
    return "not in the plan" if timeline.plan else "no rollout"


def quality_row(title: str, timeline: Timeline, q: Quality, labels: tuple[int, int]) -> list[str]:
    """The cells of one strategy's row of the quality table, in QUALITY_COLUMNS order."""
    per_version = "; ".join(f"{v} {100 * right / n:.1f} % of {n}" for v, (n, right) in
                            q.by_version.items() if n)
    wrong = " / ".join(f"{q.wrong_by_phase[p]} of {q.rows_by_phase[p]}" for p in PHASES[1:])
    return [title, timeline.outcome, per_version, wrong, f"{labels[0]} ({labels[1]})",
            _quality_check(timeline)]


def _markdown_table(rows: list[list[str]], columns: tuple[str, ...] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# Stable in blues, the candidate in oranges (darkest for p50); the markers use colours no data has.
STABLE_SHADES, STABLE_BAR = ("#08306b", "#2171b5", "#6baed6"), "tab:blue"
CANDIDATE_SHADES, CANDIDATE_BAR = ("#7f2704", "#d94801", "#fd8d3c"), "tab:orange"
OTHER_SHADES, OTHER_BAR = ("#252525", "#636363", "#969696"), "tab:gray"
FAILED_COLOUR = "tab:red"
QUANTILE_STYLES = (("p50", "-"), ("p95", "--"), ("p99", ":"))
RELEASE_MARK = ("black", "-.")
FULL_RELEASE_MARK = ("tab:green", "--")
ROLLBACK_MARK = ("tab:olive", "--")
DECISION_MARK = ("tab:purple", "-")


def _ms_label(value: float, _position: float) -> str:
    return f"{value:g}"


def _decision_label(timeline: Timeline) -> str:
    if timeline.outcome.startswith("no decision"):
        return "rolled back by hand: no decision in time"
    if timeline.rollback is not None and timeline.rollback == timeline.decided:
        return "decision: rolled back"
    return "decision: promoted" if timeline.outcome == "promoted" else "decision"


def _marks(timeline: Timeline) -> list[tuple[float, str, tuple[str, str]]]:
    """(seconds since the release, legend label, (colour, linestyle)) of each moment to mark."""
    marks = [(0.0, "release", RELEASE_MARK)]
    if timeline.full_release is not None and timeline.full_release != timeline.decided:
        marks.append((timeline.full_release - timeline.release, "v2 takes all traffic",
                      FULL_RELEASE_MARK))
    if timeline.rollback is not None and timeline.rollback != timeline.decided:
        marks.append((timeline.rollback - timeline.release, "rolled back", ROLLBACK_MARK))
    if timeline.decided is not None:
        marks.append((timeline.decided - timeline.release, _decision_label(timeline), DECISION_MARK))
    return marks


def draw_run(title: str, timeline: Timeline, requests: list[Any]) -> Figure:
    """Latency per version, failed share and answers per second, with the release and decision marked.

    >>> fig = draw_run("good / canary", Timeline.load(folder), read_requests(folder))  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    s = series(requests, timeline)
    edges = [*s.seconds, s.seconds[-1] + s.bin_s] if s.seconds else []

    def steps(values: list[Any]) -> list[float]:  # the last value repeated to close its bin
        plain = [float("nan") if v is None else float(v) for v in values]
        return plain + plain[-1:]

    fig, (lat, err, rps) = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 2, 2]})
    shades_of = {timeline.stable: STABLE_SHADES, timeline.candidate: CANDIDATE_SHADES}
    bar_colours = {timeline.stable: STABLE_BAR, timeline.candidate: CANDIDATE_BAR,
                   "failed": FAILED_COLOUR}
    for version, quantiles in s.latency_ms.items():
        shades = shades_of.get(version, OTHER_SHADES)
        for values, (name, style), colour in zip(quantiles, QUANTILE_STYLES, shades, strict=True):
            lat.plot(edges, steps(values), linestyle=style, color=colour, drawstyle="steps-post",
                     linewidth=1.3, label=f"{version} {name}")
    lat.set_yscale("log")
    lat.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    lat.yaxis.set_major_formatter(FuncFormatter(_ms_label))
    lat.yaxis.set_minor_formatter(NullFormatter())
    lat.set_ylabel("latency (ms)")
    err.plot(edges, steps(s.error_rate), drawstyle="steps-post", color=FAILED_COLOUR)
    err.set_ylabel("failed (%)")
    worst = max((v for v in s.error_rate if v is not None), default=0.0)
    err.set_ylim(0, max(5.0, worst * 1.1))
    bottom = [0] * len(s.seconds)
    for kind, counts in s.answers.items():
        rps.bar(s.seconds, counts, width=s.bin_s, align="edge", bottom=bottom,
                color=bar_colours.get(kind, OTHER_BAR),
                label=f"answered by {kind}" if kind != "failed" else "failed")
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    rps.set_ylabel("requests/s")
    rps.set_xlabel("seconds since the release (whole seconds under load)")
    for ax in (lat, err, rps):
        for x, label, (colour, style) in _marks(timeline):
            ax.axvline(x, color=colour, linestyle=style, linewidth=1.5,
                       label=label if ax is lat else None)
        ax.grid(alpha=0.3)
    # a column per version (p50, p95, p99 under each other), then one for the moments marked
    lat.legend(loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=8, ncol=len(s.latency_ms) + 1,
               frameon=False)
    rps.legend(loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=8, ncol=3, frameon=False)
    fig.suptitle(f"{title}: {timeline.outcome}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_run(path: Path, title: str, timeline: Timeline, requests: list[Any]) -> None:
    """Save :func:`draw_run`'s figure as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = draw_run(title, timeline, requests)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _publish_raw(out: Path, target: Path, runs: list[dict[str, Any]], limit: int) -> list[str]:
    """Copy the raw files that fit under ``limit`` bytes; returns the report's lines about them."""
    folders = [out / "csv" / r["scenario"] / r["strategy"] for r in runs if not r.get("skipped")]
    used, lines = 0, []
    for label, name in RAW_KINDS:
        files = [f / name for f in folders if (f / name).exists()]
        size = sum(f.stat().st_size for f in files)
        if target != out and used + size <= limit:
            for f in files:
                dest = target / f.relative_to(out)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
            used += size
            lines.append(f"- {label}: `csv/<scenario>/<strategy>/{name}` ({size / 1e6:.2f} MB)")
        elif target == out:
            lines.append(f"- {label}: `csv/<scenario>/<strategy>/{name}` ({size / 1e6:.2f} MB)")
        else:
            lines.append(f"- {label} (`{name}`, {size / 1e6:.2f} MB in all): left out of this folder "
                         f"to keep it under {limit / 1e6:g} MB; the command above writes them again")
    return lines


def _intro(manifest: dict[str, Any]) -> list[str]:
    used = [RELEASES[name] for name in manifest["strategies"]]
    seconds = manifest["seconds_per_phase"]
    return [
        "# Deployment strategies under load: what users experience during a release", "",
        f"`{manifest['command']}`", "",
        (f"Each run starts fresh v1, v2 (model services, one gunicorn worker each) and router "
         f"processes on one host. Locust runs {manifest['users']} simulated users "
         "(`loadtest/locustfile.py`: a stable `X-User-ID` each, 0.05-0.2 s between requests, 70 % "
         "single rows and 30 % batches of 2-20 rows from the breast cancer data) against the "
         f"router for {seconds:g} s; then v2 is released, the run waits for the final decision, "
         f"and the load goes on for another {seconds:g} s."),
        "",
        "## How v2 is released", "",
        "| strategy | how |", "| --- | --- |",
        *(f"| {r.title} | {r.how} |" for r in used), "",
        (f"Rollout plans (`POST /admin/rollout`) use `interval_s` {manifest['interval_s']:g}, "
         f"`min_requests` {manifest['min_requests']}, `max_failed_analyses` 1 and the thresholds "
         f"`{json.dumps(THRESHOLDS)}`, the router's defaults: a check fails only on evidence "
         "(an anytime-valid confidence interval) of harm beyond them, and latency is harm only "
         "when slower by more than the ratio and by more than the margin in milliseconds, so "
         "the noise of a shared host (Locust, the router and both model services on one machine) "
         "does not fail a healthy v2, while the slow v2 of the bad-latency scenario is far beyond "
         "both. The intervals are short so that a run takes about a minute; in production they "
         "would be minutes."), "",
        "## Measures", "",
        ("- **before / during / after**: requests by start time: before the release; from the "
         "release to the final decision (promotion or rollback; for a restart, until the new "
         "process is ready); from then to the end of the run."),
        ("- **failed**: status not 200, or a body that is not a valid prediction (wrong number of "
         "predictions, probabilities not summing to 1, no `model_version`)."),
        ("- **exposure before the decision**: requests the candidate answered between the release "
         "and the final decision (to the end of the run when nothing decides), of all requests "
         "sent in that window (a valid answer names its model in `model_version`; a failed one "
         "counts when the candidate's service gave it); **users exposed**: distinct `X-User-ID`s "
         "among them."),
        ("- **to 100 % v2**: from the release until v2 answers all traffic (switch, reload, "
         "promotion, or the restarted process being ready); **to rollback**: until traffic is "
         "back on v1."),
        "- **latency**: client-side response time (nearest-rank percentiles over the phase).",
        "",
        ("Every number is computed from the request log that the locustfile writes through "
         "Locust's request event; each run's totals per version were checked against Locust's "
         f"own `{LOCUST_PREFIX}_stats.csv`."),
    ]


def _run_notes(title: str, release: Release, timeline: Timeline) -> list[str]:
    notes = [f"- {title}: {note}." for note in timeline.notes]
    if timeline.max_weight is not None:
        notes.append(f"- {title}: highest canary weight reached {timeline.max_weight} %.")
    if release.restart:
        notes.append(f"- {title}: the restarted service is still the stable slot, now serving "
                     f"{timeline.candidate} (its answers name {timeline.candidate} in "
                     "`X-Model-Version`); nothing decides, so its exposure runs to the end of "
                     "the run.")
    return notes


def _scenario_section(out: Path, target: Path, scenario_name: str,
                      runs: list[dict[str, Any]]) -> list[str]:
    """One scenario's table, notes and plots (rendered into ``target/plots``)."""
    scenario = SCENARIOS[scenario_name]
    rows, notes, plots, quality_rows = [], [], [], []
    for run in (r for r in runs if r["scenario"] == scenario_name):
        release = RELEASES[run["strategy"]]
        folder = out / "csv" / scenario_name / release.name
        if run.get("skipped"):
            notes.append(f"- {release.title}: {run['skipped']}.")
            continue
        if run.get("broken"):
            notes.append(f"- {release.title}: run broke: {run['broken']}.")
            if not (folder / TIMELINE).exists():
                rows.append([release.title, "run broke"] + ["—"] * (len(COLUMNS) - 2))
                continue
        timeline = Timeline.load(folder)
        requests = read_requests(folder)
        rows.append(table_row(release.title, timeline, measure(requests, timeline)))
        scored = quality(requests, timeline)
        if scored is not None:
            labels = read_locust_totals(folder).get("feedback", (0, 0))
            quality_rows.append(quality_row(release.title, timeline, scored, labels))
        notes += _run_notes(release.title, release, timeline)
        plot = Path("plots") / f"{scenario_name}-{release.name}.png"
        plot_run(target / plot, f"{scenario_name} / {release.title}", timeline, requests)
        plots.append(f"![{scenario_name} / {release.title}]({plot.as_posix()})\n")
    lines = ["", f"## Scenario {scenario.name}: {scenario.description}", "", _markdown_table(rows)]
    if quality_rows:
        lines += ["", ("Quality: rows answered by each version (the body's `model_version`) and "
                       "the share predicted as the data set labels them; rows answered wrongly "
                       "from the release to the decision and after it; feedback requests "
                       "(`POST /feedback`) the users sent; the last analysis's quality check "
                       "(the accuracy drop of v2 against v1 with its anytime-valid interval)."),
                  "", _markdown_table(quality_rows, QUALITY_COLUMNS)]
    if notes:
        lines += ["", *notes]
    if plots:
        lines += ["", ("Per whole second under load: latency of the answers each version gave "
                       "(p50 solid, p95 dashed, p99 dotted; v1 blue, v2 orange), share of failed "
                       "requests, and answers by the model version that gave them (the body's "
                       "`model_version`) with failures on top. The release is the black dash-dot "
                       "line at 0, the final decision the purple line:"), "",
                  *plots]
    return lines


def render(out: Path, publish: Path | None = None, raw_limit_mb: float = 1.0) -> Path:
    """Write ``report.md`` and ``plots/`` into ``publish`` (default: ``out``) from ``out``'s files.

    A ``findings.md`` in ``out`` (what a person read in the numbers) is included after the
    introduction.
    """
    manifest = json.loads((out / MANIFEST).read_text())
    target = publish or out
    target.mkdir(parents=True, exist_ok=True)
    lines = _intro(manifest)
    findings = out / FINDINGS
    if findings.exists():
        lines += ["", "## What the numbers show", "", findings.read_text().strip()]
    for scenario_name in manifest["scenarios"]:
        lines += _scenario_section(out, target, scenario_name, manifest["runs"])
    lines += ["", "## Raw data", "",
              *_publish_raw(out, target, manifest["runs"], int(raw_limit_mb * 1_000_000)), ""]
    report = target / "report.md"
    report.write_text("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.report", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder written by python -m loadtest.compare")
    parser.add_argument("--publish", type=Path, help="write the report, plots and raw files here")
    parser.add_argument("--raw-limit-mb", type=float, default=1.0,
                        help="publish raw files only while their total stays under this (default 1)")
    args = parser.parse_args(argv)
    if not (args.out / MANIFEST).exists():
        parser.error(f"{args.out} holds no {MANIFEST}; run python -m loadtest.compare first")
    print(render(args.out, args.publish, args.raw_limit_mb).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
