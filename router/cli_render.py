"""Human-readable output of the ``rollout`` command line: state, analysis, rollout and events."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

CHANGE_WIDTH = 60  # the audit log's change column wraps between parts beyond this


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- rendering -------------------------------------------------------------------------------------


def _lines(pairs: Iterable[tuple[str, Any]]) -> str:
    pairs = list(pairs)
    width = max(len(key) for key, _ in pairs) + 2
    return "\n".join(f"{key + ':':<{width}}{value}" for key, value in pairs)


def _clock(value: Any) -> str:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%H:%M:%S")
    return str(value or "")[11:19] or "-"


def _num(value: Any) -> str:
    if value is None:
        return "none"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def slot_name(state: dict[str, Any], slot: str | None) -> str:
    """A slot with the version it serves: ``blue (v2)``; the bare name when both are the same."""
    if not slot:
        return "none"
    version = ((state.get("slots") or {}).get(slot) or {}).get("version")
    if not version or version == slot:
        return slot
    return f"{slot} ({version})"


def _split(state: dict[str, Any]) -> str:
    weights = state.get("weights") or {state.get("stable"): 100}
    return ", ".join(f"{slot_name(state, v)} {w}%" for v, w in weights.items() if w) or "-"


def _slots(state: dict[str, Any]) -> str:
    """Every slot: the version it serves, its role, and whether it is idle (no traffic)."""
    parts = []
    for slot, info in (state.get("slots") or {}).items():
        role = info.get("role") or "no role"
        idle = ", idle" if info.get("idle") else ""
        parts.append(f"{slot} serves {info.get('version') or 'an unknown version'} ({role}{idle})")
    return "; ".join(parts) or "-"


def _artifact(label: str | None, meta: dict[str, Any] | None, shown: str | None = None) -> str:
    shown = shown or label or "none"
    if not label or not meta:
        return shown
    if "error" in meta:
        return f"{shown}  ({meta['error']})"
    parts = [meta.get("description"), f"sha256 {str(meta.get('sha256', ''))[:12]}",
             f"created {str(meta.get('created_at') or meta.get('trained_at', ''))[:16].replace('T', ' ')}",
             f"sklearn {meta.get('sklearn_version', '?')}"]
    heldout = meta.get("heldout_metrics") or {}
    for name in ("accuracy", "mae"):
        if name in heldout:
            parts.append(f"{name} {heldout[name]:.4f}")
    served = meta.get("version")
    prefix = f"{label} (serving {served})" if served and served != label else label
    return f"{prefix}  " + ", ".join(p for p in parts if p)


def render_releases(releases: list[dict[str, Any]]) -> str:
    """The release history as a table, oldest first."""
    if not releases:
        return "no releases yet"
    header = ("ID", "VERSION", "SLOT", "STRATEGY", "STARTED", "ENDED", "OUTCOME", "ANALYSES",
              "CONFIG VERSIONS", "WHY")
    rows = [header]
    for r in releases:
        written = r.get("config_versions") or []
        span = f"{written[0]}-{written[-1]}" if len(written) > 1 else ",".join(map(str, written))
        rows.append((str(r.get("id")), str(r.get("version") or "-"), str(r.get("slot") or "-"),
                     str(r.get("strategy")), _clock(r.get("started_at")),
                     _clock(r.get("ended_at")) if r.get("ended_at") else "-",
                     str(r.get("outcome")), str(r.get("analyses", 0)), span or "-",
                     one_line(str(r.get("why") or ""))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                     + "  " + row[-1] for row in rows).rstrip()


def _progress(rollout: dict[str, Any], state: dict[str, Any]) -> str:
    plan = rollout.get("plan") or {}
    steps, phase = plan.get("steps") or [], rollout.get("phase")
    text = f"{rollout.get('id')} {rollout.get('status')}: {plan.get('strategy')}"
    release = rollout.get("release") or {}
    if release.get("version"):
        text += f" of {release['version']} in slot {release.get('slot')}"
    if phase not in (plan.get("strategy"), "done"):
        text += f", phase {phase}"
    if phase == "canary" and steps:
        step = rollout.get("step", 0) + 1
        text += f", step {step} of {len(steps)} ({state.get('canary_weight')}%)"
    if plan.get("interval_s") is not None:
        text += f", analysis every {plan['interval_s']:g} s"
    return text


def check_text(check: dict[str, Any]) -> str:
    """One sub-check: its name, estimate, confidence interval, limit and decision."""
    text = f"{check.get('name')} {_num(check.get('value'))}"
    interval = check.get("interval")
    if interval:
        low, high = (_num(x) if x is not None else "?" for x in interval)
        text += f" [{low}, {high}]"
    return f"{text} (limit {_num(check.get('threshold'))}) {check.get('decision')}"


def waiting_text(verdict: dict[str, Any]) -> str:
    """While an analysis waits: the further requests (and minutes) or labelled rows expected to a
    decision."""
    if verdict.get("decision") != "wait":
        return ""
    text = ""
    if verdict.get("needed_requests") is not None:
        text = f"; about {verdict['needed_requests']} more requests"
        if verdict.get("needed_minutes") is not None:
            text += f" (~{verdict['needed_minutes']:g} min at the current rate)"
    if verdict.get("needed_labels") is not None:
        text += f"; about {verdict['needed_labels']} more labelled rows (POST /feedback)"
    return text


def verdict_line(decision: dict[str, Any] | None) -> str:
    if not decision:
        return "none yet"
    checks = "; ".join(check_text(c) for c in decision.get("checks") or [])
    verdict, action = decision.get("decision"), decision.get("action")
    head = f"{verdict} -> {action}" if action != verdict else str(verdict)
    head += f" at {_clock(decision.get('time'))}"
    head += waiting_text(decision)
    line = f"{head}: {checks}" if checks else head
    drift = decision.get("input_drift") or {}
    return f"{line}; {drift['note']}" if drift.get("shifting") else line


def render_state(state: dict[str, Any], url: str,
                 artifacts: dict[str, dict[str, Any]] | None = None) -> str:
    """The routing state as aligned ``key: value`` lines."""
    artifacts = artifacts or {}
    stable, candidate = state.get("stable"), state.get("candidate")
    shadow, rollout = state.get("shadow_percent") or 0, state.get("rollout")
    pairs: list[tuple[str, Any]] = [
        ("router", url),
        ("config version", state.get("config_version")),
        ("strategy", state.get("strategy")),
        ("split", _split(state)),
        ("shadow", f"{shadow}% mirrored to {slot_name(state, candidate)}" if shadow else "off"),
        ("slots", _slots(state)),
        ("stable", _artifact(stable, artifacts.get(stable or ""))),
        ("candidate", _artifact(candidate, artifacts.get(candidate or ""))),
        ("rollout", _progress(rollout, state) if rollout else "none"),
    ]
    if rollout:
        decisions = rollout.get("decisions") or []
        pairs.append(("last verdict", verdict_line(decisions[-1] if decisions else None)))
    store = state.get("store") or {}
    if not store.get("reachable", True):
        pairs.append(("state store", f"unreachable: {store.get('error')}"))
    return _lines(pairs)


def render_analysis(analysis: dict[str, Any]) -> str:
    """One line per version: requests, error rate, latency percentiles, shadow agreement."""
    rows = []
    for version, stats in (analysis.get("versions") or {}).items():
        lat, shadow = stats.get("latency_ms") or {}, stats.get("shadow") or {}
        line = (f"{version:<6} {stats.get('requests', 0):>7.0f} req  "
                f"err {stats.get('error_rate', 0):7.2%}  p50 {_ms(lat.get('p50'))} "
                f"p95 {_ms(lat.get('p95'))} p99 {_ms(lat.get('p99'))} ms")
        if shadow.get("requests"):
            line += f"  shadow {shadow['requests']:.0f}, agreement {_num(shadow.get('agreement'))}"
        rows.append(line)
    rows += render_quality(analysis.get("quality"))
    return "\n".join(rows) or "no traffic yet"


def render_quality(quality: dict[str, Any] | None) -> list[str]:
    """Lines for the labels received: accuracy (95 % interval) and log loss, or MAE and RMSE, per
    version; under shadow, the paired comparison with McNemar's p-value."""
    if not quality:
        return []
    if quality.get("error"):
        return [f"quality: {quality['error']}"]
    rows = []
    for version, q in (quality.get("versions") or {}).items():
        if q.get("task") == "classification":
            low, high = q.get("accuracy_ci95") or (None, None)
            rows.append(f"{version:<6} {q['rows']:>7} labelled  accuracy {_num(q.get('accuracy'))}"
                        f" [{_num(low)}, {_num(high)}]  log loss {_num(q.get('log_loss'))}")
        else:
            rows.append(f"{version:<6} {q['rows']:>7} labelled  MAE {_num(q.get('mae'))}  "
                        f"RMSE {_num(q.get('rmse'))}")
    for pair in quality.get("paired") or []:
        head = f"paired {pair['stable']} vs {pair['candidate']} on {pair['rows']} rows: "
        if "mcnemar" in pair:
            rows.append(head + f"accuracy {_num(pair.get('stable_accuracy'))} vs "
                        f"{_num(pair.get('candidate_accuracy'))}, discordant "
                        f"{pair['stable_right_candidate_wrong']}/"
                        f"{pair['stable_wrong_candidate_right']}, McNemar p = "
                        f"{_num(pair['mcnemar'].get('p_value'))}")
        else:
            rows.append(head + f"MAE {_num(pair.get('stable_mae'))} vs "
                        f"{_num(pair.get('candidate_mae'))}")
    return rows


def render_watch(state: dict[str, Any], analysis: dict[str, Any]) -> str:
    """One refresh of ``watch``: progress, split, per-version statistics, live verdict."""
    now = datetime.now(UTC).strftime("%H:%M:%S")
    body = render_analysis(analysis).replace("\n", "\n  ")
    live = analysis.get("verdict") or {}
    verdict = live.get("decision", "-") + waiting_text(live)
    checks = "; ".join(check_text(c) for c in live.get("checks") or [])
    return (f"[{now}] {_progress(state.get('rollout') or {}, state)}; split {_split(state)}\n"
            f"  {body}\n  live verdict: {verdict}" + (f": {checks}" if checks else ""))


def render_idle(rollout: dict[str, Any] | None) -> str:
    """``watch`` with nothing to follow: say so, and how the last rollout ended."""
    if not rollout:
        return "no rollout is running; none has run on this router yet"
    plan = rollout.get("plan") or {}
    outcome = str(rollout.get("status") or "ended").replace("_", " ")
    line = (f"last rollout: {rollout.get('id')} ({plan.get('strategy')} of "
            f"{rollout.get('candidate')}) {outcome} at {_clock(rollout.get('updated_at'))}")
    return f"no rollout is running\n{line}"


def render_events(events: list[dict[str, Any]]) -> str:
    """The audit log as a table; a long change wraps onto lines of its own in its column.

    Every part of a change is shown: the table is the audit trail, and ``--json`` is for scripts.
    """
    if not events:
        return "no events"
    header = ("ID", "TIME", "CONFIG", "ACTOR", "ACTION", "CHANGE", "REASON")
    rows: list[tuple[str, ...]] = [header]
    for e in events:
        first, *rest = _wrap(_change(e.get("old") or {}, e.get("new") or {}), CHANGE_WIDTH)
        rows.append((str(e.get("id", "")), str(e.get("time", ""))[:19].replace("T", " "),
                     str(e.get("config_version", "")), str(e.get("actor", "")),
                     str(e.get("action", "")), first, one_line(str(e.get("reason") or ""))))
        rows.extend(("", "", "", "", "", more, "") for more in rest)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
                      + "  " + row[-1]).rstrip() for row in rows)


def _change(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    parts = []
    for key, after in new.items():
        before = old.get(key)
        if key == "rollout":
            before, after = (before or {}).get("status"), (after or {}).get("status")
            if before == after:
                continue
        parts.append(f"{key} {_num(before)}->{_num(after)}")
    return parts or ["-"]


def _wrap(parts: list[str], width: int) -> list[str]:
    """Parts joined by ", " into lines of at most ``width``; a longer part keeps a line whole."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += ", " + part
        else:
            if lines:
                lines[-1] += ","
            lines.append(part)
    return lines



def _table(rows: list[tuple[str, ...]], right: int = 0) -> list[str]:
    """Columns padded to their widest cell; the first ``right`` columns after the first are
    right-aligned (numbers)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if 0 < i <= right else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def render_disagreements(doc: dict[str, Any], input_width: int = 60) -> str:
    """The confusion matrix, the difference distribution and the latest disagreeing rows."""
    stable, candidate = doc.get("stable"), doc.get("candidate")
    rows = doc.get("rows") or 0
    agreement = doc.get("agreement")
    pairs = ", ".join(f"{p.get('stable')} -> {p.get('candidate')}" for p in doc.get("pairs") or [])
    head = [("pair", f"{stable or '-'} -> {candidate or '-'} (stable -> candidate)"),
            ("rows", f"{rows} compared, {doc.get('disagreeing_rows') or 0} disagree"
                     + (f" (agreement {agreement:.1%})" if agreement is not None else "")),
            ("pairs from", str(doc.get("pairs_from") or "-")),
            ("recorded pairs", pairs or "none")]
    if doc.get("note"):
        head.append(("note", str(doc["note"])))
    out = [_lines(head)]
    matrix = doc.get("confusion_matrix")
    if matrix and matrix.get("classes"):
        names = [_label(c) for c in matrix["classes"]]
        grid = [(f"{stable} \\ {candidate}", *names)]
        grid += [(name, *map(str, line)) for name, line in zip(names, matrix["counts"],
                                                                strict=True)]
        out += ["", "confusion matrix (rows: stable's class, columns: the candidate's)",
                *("  " + line for line in _table(grid, right=len(names)))]
    elif doc.get("confusion_matrix_note"):
        out += ["", f"confusion matrix: none ({doc['confusion_matrix_note']})"]
    differences = doc.get("differences") or {}
    buckets = [b for b in differences.get("buckets") or [] if b.get("count")]
    if buckets:
        top = max(b["count"] for b in buckets)
        bars = [(f"<= {b['le']:g}" if b["le"] is not None else "above", str(b["count"]),
                 "#" * max(1, round(30 * b["count"] / top))) for b in buckets]
        out += ["", f"{differences.get('kind', '')} difference per row",
                *("  " + line for line in _table(bars, right=1))]
    samples = doc.get("samples") or []
    if not samples:
        out += ["", "no disagreeing rows recorded"]
        return "\n".join(out)
    table: list[tuple[str, ...]] = [("TIME", "REQUEST ID", "ROW", "STABLE", "CANDIDATE", "DIFF",
                                     "INPUT")]
    for s in samples:
        shown = json.dumps(s.get("input"), separators=(",", ":"))
        if len(shown) > input_width:
            shown = shown[:input_width - 3] + "..."
        table.append((str(s.get("time") or "")[:19].replace("T", " "),
                      str(s.get("request_id") or "-"), str(s.get("row", "")),
                      _label(s.get("stable_prediction")), _label(s.get("candidate_prediction")),
                      _num(s.get("difference")), shown))
    out += ["", f"latest disagreeing rows, newest first ({len(samples)} shown, "
                f"{doc.get('sample_capacity')} kept per pair)", *_table(table)]
    return "\n".join(out)
