"""Pure parts of the comparison: phases, percentiles and what counts as exposure."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.compare_measures import Request, Timeline, exposed, measure, percentile, phase_of, series


def _timeline(**fields: object) -> Timeline:
    base = {"scenario": "good", "strategy": "canary", "stable": "v1", "candidate": "v2",
            "in_place": False, "started": 0.0, "release": 10.0, "ended": 40.0}
    return Timeline(**{**base, **fields})  # type: ignore[arg-type]


def _req(start: float, version: str = "v1", model: str | None = None, failed: bool = False,
         status: int | None = None, ms: float = 5.0) -> Request:
    return Request(start, "user-1", version, "" if failed else (model or version),
                   status or (500 if failed else 200), ms, failed)


@pytest.mark.parametrize("values, q, expected", [
    ([5.0], 0.99, 5.0),
    ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
    ([1.0, 2.0, 3.0, 4.0], 0.75, 3.0),
    ([float(i) for i in range(1, 101)], 0.95, 95.0),
    ([float(i) for i in range(1, 101)], 0.99, 99.0),
])
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


@pytest.mark.parametrize("fields, start, phase", [
    ({"decided": 20.0}, 9.99, "before"),
    ({"decided": 20.0}, 10.0, "during"),
    ({"decided": 20.0}, 20.0, "after"),
    ({"full_release": 15.0}, 16.0, "after"),  # a restart: settled once the new process is ready
    ({}, 39.0, "during"),  # nothing decided: the release lasts to the end
])
def test_phase_of(fields: dict[str, float], start: float, phase: str) -> None:
    assert phase_of(start, _timeline(**fields)) == phase


@pytest.mark.parametrize("fields, one, answer", [
    # routing strategies: valid answers by model, failures by the service that gave them
    ({"decided": 20.0}, _req(12.0, "v2"), True),
    ({"decided": 20.0}, _req(12.0, "v2", failed=True), True),
    ({"decided": 20.0}, _req(12.0, "v1"), False),
    ({"decided": 20.0}, _req(9.0, "v2"), False),  # before the release
    ({"decided": 20.0}, _req(21.0, "v2"), False),  # after the decision
    # in place: stable's label, the candidate's model
    ({"in_place": True, "exposure_from": 12.0}, _req(13.0, "v1", model="v2"), True),
    ({"in_place": True, "exposure_from": 12.0}, _req(13.0, "v1", failed=True), True),
    ({"in_place": True, "exposure_from": 12.0}, _req(13.0, "v1", failed=True, status=502), False),
    ({"in_place": True, "exposure_from": 12.0}, _req(11.0, "v1", failed=True), False),
    ({"in_place": True, "exposure_from": 12.0, "rollback": 15.0, "decided": 15.0},
     _req(16.0, "v1", model="v2"), False),
])
def test_exposed(fields: dict[str, object], one: Request, answer: bool) -> None:
    assert exposed(one, _timeline(**fields)) is answer


def test_measure_counts_phases_exposure_and_times() -> None:
    timeline = _timeline(decided=20.0, rollback=20.0, max_weight=10)
    requests = [_req(5.0, ms=1.0), _req(11.0, "v2", failed=True, ms=2.0), _req(12.0, ms=3.0),
                _req(25.0, ms=4.0)]
    m = measure(requests, timeline)
    assert (m.requests, m.failed) == (4, 1)
    assert m.failed_by_phase == {"before": 0, "during": 1, "after": 0}
    assert m.latency_ms["during"] == (2.0, 3.0, 3.0)
    assert (m.exposure, m.sent_before_decision, m.users_exposed) == (1, 2, 1)
    assert m.by_version == {"v1": (3, 0), "v2": (1, 1)}
    assert (m.time_to_rollback, m.time_to_full_release) == (10.0, None)


@pytest.mark.parametrize("argv", [["--strategies", "nope"], ["--scenarios", "good,worse"],
                                  ["--seconds-per-phase", "0"], ["--users", "0"]])
def test_compare_refuses_bad_arguments_with_exit_code_2(argv: list[str], tmp_path: object) -> None:
    from loadtest.compare import main

    assert main([*argv, "--out", str(tmp_path)]) == 2


def test_compare_refuses_an_output_folder_it_cannot_create(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loadtest.compare import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["--scenarios", "good", "--strategies", "canary", "--out", str(blocker / "out")]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err


def _steady(first: float, last: float, every: float = 0.1, **fields: object) -> list[Request]:
    """One request every ``every`` seconds from ``first`` to ``last`` (inclusive)."""
    count = round((last - first) / every) + 1
    return [_req(round(first + i * every, 6), **fields) for i in range(count)]  # type: ignore[arg-type]


@pytest.mark.parametrize("first, last, seconds", [
    (7.55, 12.35, [-2.0, -1.0, 0.0, 1.0]),  # starts and ends mid-second: both partial ones dropped
    (8.0, 12.35, [-2.0, -1.0, 0.0, 1.0]),  # starts on a whole second: that one is whole
    (7.6, 12.0, [-2.0, -1.0, 0.0, 1.0]),  # the last request, at 12.0, closes [1, 2)
    (10.2, 10.9, []),  # no whole second under load
])
def test_series_keeps_only_whole_seconds_under_load(first: float, last: float,
                                                    seconds: list[float]) -> None:
    s = series(_steady(first, last), _timeline())
    assert s.seconds == seconds
    assert s.answers.get("v1", []) == [10] * len(seconds)


def test_series_leaves_a_partial_last_second_out_of_the_failed_share() -> None:
    # the load stops 0.25 s into a second whose few requests all failed: 100 % for that bar
    requests = _steady(8.0, 11.95) + _steady(12.0, 12.2, failed=True)
    s = series(requests, _timeline())
    assert s.seconds == [-2.0, -1.0, 0.0, 1.0]
    assert s.error_rate == [0.0, 0.0, 0.0, 0.0]
    assert "failed" not in s.answers


def test_series_latency_is_per_answering_version() -> None:
    requests = (_steady(10.0, 11.95, every=0.05, ms=5.0)
                + _steady(10.01, 11.96, every=0.05, version="v2", ms=50.0)
                + _steady(10.02, 11.97, every=0.05, version="v2", failed=True, ms=80.0))
    s = series(requests, _timeline(decided=20.0))
    assert s.seconds == [0.0]  # the last request, at 11.97, ends no second after [0, 1)
    p50, p95, p99 = s.latency_ms["v1"]
    assert (p50, p95, p99) == ([5.0], [5.0], [5.0])
    p50, p95, p99 = s.latency_ms["v2"]  # failures count for the service that gave them
    assert (p50, p99) == ([50.0], [80.0])
    assert s.answers == {"v1": [20], "v2": [20], "failed": [20]}


def test_quality_counts_rows_right_per_answering_version_and_phase() -> None:
    from loadtest.compare_measures import quality
    from loadtest.report import quality_row

    timeline = _timeline(decided=20.0, rollback=20.0,
                         decisions=[{"checks": [{"name": "accuracy_drop", "value": 0.2,
                                                 "threshold": 0.05, "interval": [0.1, 0.3],
                                                 "decision": "fail"}]}])
    base = [_req(5.0), _req(12.0, "v2"), _req(13.0, "v2"), _req(25.0), _req(26.0, failed=True)]
    scored = [Request(r.start, r.user, r.version, r.model_version, r.status, r.ms, r.failed,
                      rows, correct)
              for r, (rows, correct) in zip(base, [(1, 1), (4, 2), (1, 0), (3, 3), (2, None)],
                                            strict=True)]
    q = quality(scored, timeline)
    assert q is not None
    assert q.by_version == {"v1": (4, 4), "v2": (5, 2)}  # the failed request is not scored
    assert q.rows_by_phase == {"before": 1, "during": 5, "after": 3}
    assert q.wrong_by_phase == {"before": 0, "during": 3, "after": 0}
    row = quality_row("canary", timeline, q, (7, 0))
    assert row[2] == "v1 100.0 % of 4; v2 40.0 % of 5"
    assert row[3] == "3 of 5 / 0 of 3"
    assert row[5] == "accuracy_drop 0.200 [0.100, 0.300] against 0.05: fail"
    assert quality(base, timeline) is None  # a log without labels has no quality table
    # an analysis before the candidate had a labelled row has no estimate yet
    early = _timeline(decisions=[{"checks": [{"name": "accuracy_drop", "value": None,
                                              "threshold": 0.05, "interval": None,
                                              "decision": "pass"}]}])
    assert quality_row("canary", early, q, (0, 0))[5] == "accuracy_drop — against 0.05: pass"
