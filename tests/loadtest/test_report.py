"""The run plots a reader opens first: a latency axis in plain milliseconds and a legend of distinct styles."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from loadtest.compare_measures import Request, Timeline
from loadtest.report import draw_run

PLAIN_NUMBER = re.compile(r"\d+(\.\d+)?")
Draw = Callable[[Timeline, list[Request]], Figure]


def _timeline(**fields: object) -> Timeline:
    base = {"scenario": "bad-latency", "strategy": "canary", "stable": "v1", "candidate": "v2",
            "in_place": False, "started": 0.0, "release": 10.0, "ended": 20.0}
    return Timeline(**{**base, **fields})  # type: ignore[arg-type]


def _load(v1_ms: tuple[float, float], v2_ms: tuple[float, float], failed_v2: bool = False) -> list[Request]:
    """Ten requests a second from 5.3 s to 15.3 s; v2 answers every fifth from the release on.

    Each version's latency is the same within a second and climbs from its low to its high
    over the run, so the plotted percentiles span exactly that range.
    """
    rows = []
    for i in range(101):
        start = round(5.3 + i / 10, 6)
        version = "v2" if start >= 10.0 and i % 5 == 0 else "v1"
        low, high = v1_ms if version == "v1" else v2_ms
        ms = low * (high / low) ** min(1.0, max(0.0, (int(start) - 6) / 8))
        failed = failed_v2 and version == "v2"
        rows.append(Request(start, f"user-{i % 7}", version, "" if failed else version,
                            500 if failed else 200, ms, failed))
    return rows


@pytest.fixture
def figure() -> Iterator[Draw]:
    import matplotlib.pyplot as plt

    figures: list[Figure] = []

    def draw(timeline: Timeline, requests: list[Request]) -> Figure:
        figures.append(draw_run("bad-latency / canary", timeline, requests))
        figures[-1].canvas.draw()
        return figures[-1]

    yield draw
    for fig in figures:
        plt.close(fig)


@pytest.mark.parametrize("v1_ms, v2_ms, ticks", [
    ((2.0, 30.0), (100.0, 300.0), ["2", "5", "10", "20", "50", "100", "200"]),
    ((0.4, 0.9), (1.0, 2.5), ["0.5", "1", "2"]),
])
def test_latency_axis_is_labelled_in_plain_milliseconds(figure: Draw, v1_ms: tuple[float, float],
                                                        v2_ms: tuple[float, float],
                                                        ticks: list[str]) -> None:
    lat = figure(_timeline(decided=14.0, rollback=14.0), _load(v1_ms, v2_ms)).axes[0]
    low, high = lat.get_ylim()
    shown = [(t.get_position()[1], t.get_text()) for t in lat.get_yticklabels()
             if low <= t.get_position()[1] <= high]
    assert [text for _, text in shown] == ticks
    for value, text in shown:  # the plotted values are milliseconds, so is each label
        assert PLAIN_NUMBER.fullmatch(text) and float(text) == pytest.approx(value)
    assert all(t.get_text() == "" for t in lat.get_yticklabels(minor=True))
    assert lat.get_ylabel() == "latency (ms)"


def _style(handle: object) -> tuple[str, str]:
    if isinstance(handle, Line2D):
        return to_hex(handle.get_color()), str(handle.get_linestyle())
    assert isinstance(handle, Patch)
    return to_hex(handle.get_facecolor()), "bar"


@pytest.mark.parametrize("fields, failed_v2, marks", [
    ({"decided": 14.0, "rollback": 14.0, "outcome": "rolled back (error_rate_increase 0.2 > 0.02)"},
     True, ["release", "decision: rolled back"]),
    ({"full_release": 12.0, "decided": 14.0, "outcome": "promoted"},
     False, ["release", "v2 takes all traffic", "decision: promoted"]),
])
def test_every_legend_entry_has_its_own_style(figure: Draw, fields: dict[str, object],
                                              failed_v2: bool, marks: list[str]) -> None:
    fig = figure(_timeline(**fields), _load((2.0, 30.0), (100.0, 300.0), failed_v2))
    entries = [(text.get_text(), _style(handle)) for ax in fig.axes if ax.get_legend()
               for text, handle in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles,
                                       strict=True)]
    labels = [label for label, _ in entries]
    assert labels[:6] == ["v1 p50", "v1 p95", "v1 p99", "v2 p50", "v2 p95", "v2 p99"]
    assert [label for label in labels if label in marks] == marks
    styles = [style for _, style in entries]
    assert len(set(styles)) == len(styles), entries
    # nor does a moment marked share its style with a data line of any panel (the failed share)
    marked = {style for label, style in entries if label in marks}
    data = {_style(line) for ax in fig.axes for line in ax.get_lines() if len(set(line.get_xdata())) > 1}
    assert not marked & data
