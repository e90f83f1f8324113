"""Disagreement analytics end to end: a real router in shadow mode in front of the real v1 and v2,
its state in SQLite or Redis, read through ``GET /admin/disagreements`` and ``rollout
disagreements``."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests
from sklearn.datasets import load_breast_cancer

from router.cli import main
from tests.router.conftest import StartRouter, seed_state
from tests.router.helpers import ADMIN_TOKEN, JSON, admin, error_of, predict, put_state
from tests.servers import ServerProcess, wait_until

ROWS = load_breast_cancer().data.tolist()
KEEP = 4


@pytest.fixture(scope="module")
def answers(models: dict[str, str]) -> dict[str, list[str]]:
    """Each service's own prediction for every breast-cancer row, asked directly."""
    out = {}
    for version, url in models.items():
        resp = requests.post(url + "/predict", json={"instances": ROWS}, timeout=30)
        assert resp.status_code == 200
        out[version] = resp.json()["predictions"]
    return out


@pytest.fixture(scope="module")
def disagreeing(answers: dict[str, list[str]]) -> list[int]:
    rows = [i for i, (a, b) in enumerate(zip(answers["v1"], answers["v2"], strict=True)) if a != b]
    assert len(rows) >= KEEP + 2, "v1 and v2 should disagree on a few breast-cancer rows"
    return rows


def body(rows: list[int]) -> bytes:
    return json.dumps({"instances": [ROWS[i] for i in rows]}).encode()


def read(url: str, **query: Any) -> dict[str, Any]:
    resp = admin("GET", url, "/admin/disagreements", params=query)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def compared_rows(url: str, rows: int) -> Callable[[], bool]:
    return lambda: read(url)["rows"] >= rows


def matrix_of(doc: dict[str, Any]) -> dict[tuple[str, str], int]:
    classes, counts = doc["confusion_matrix"]["classes"], doc["confusion_matrix"]["counts"]
    return {(classes[i], classes[j]): n for i, line in enumerate(counts)
            for j, n in enumerate(line) if n}


def shadow_router(start_router: StartRouter, models: dict[str, str], state_url: str,
                  **env: str) -> ServerProcess:
    seed_state(state_url, models, strategy="shadow", stable="v1", candidate="v2",
               shadow_percent=100)
    return start_router(models, state_url=state_url, ROUTER_DISAGREEMENT_SAMPLES=str(KEEP),
                        **env)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def state_url(request: pytest.FixtureRequest, sqlite_url: Callable[[], str]) -> str:
    if request.param == "sqlite":
        return sqlite_url()
    return str(request.getfixturevalue("redis_state_url"))


def test_matrix_counts_what_both_services_answer_and_the_sample_rotates(
        start_router: StartRouter, models: dict[str, str], state_url: str,
        answers: dict[str, list[str]], disagreeing: list[int]) -> None:
    r = shadow_router(start_router, models, state_url)  # two workers, one store
    agreeing = [i for i in range(60) if i not in disagreeing][:40]
    batch = agreeing + disagreeing[:2]  # one request of many rows, two of them disagreeing
    assert predict(r.url, {"X-Request-ID": "batch-1"}, body(batch)).status == 200
    wait_until(compared_rows(r.url, len(batch)), timeout=15)
    singles = disagreeing[2:KEEP + 4]
    for n, i in enumerate(singles):  # one at a time, so the order they are recorded is known
        answer = predict(r.url, {"X-Request-ID": f"single-{n}"}, body([i]))
        assert answer.status == 200 and answer.version == "v1"
        wait_until(compared_rows(r.url, len(batch) + n + 1), timeout=15)

    doc = read(r.url, limit=100)

    sent = batch + singles
    assert (doc["stable"], doc["candidate"], doc["task"]) == ("v1", "v2", "classification")
    assert doc["rows"] == len(sent)
    assert matrix_of(doc) == dict(Counter((answers["v1"][i], answers["v2"][i]) for i in sent))
    assert doc["disagreeing_rows"] == 2 + len(singles)
    assert sum(b["count"] for b in doc["differences"]["buckets"]) == len(sent)
    # bounded: the newest KEEP disagreeing rows, newest first; the batch's were dropped first
    assert doc["sample_capacity"] == KEEP
    newest = list(reversed(list(enumerate(singles))))[:KEEP]
    assert [s["request_id"] for s in doc["samples"]] == [f"single-{n}" for n, _ in newest]
    for sample, (_, i) in zip(doc["samples"], newest, strict=True):
        assert sample["input"] == ROWS[i]
        assert (sample["stable_prediction"], sample["candidate_prediction"]) == (
            answers["v1"][i], answers["v2"][i])
        assert (sample["stable"], sample["candidate"]) == ("v1", "v2")
    assert [p["stable"] + ">" + p["candidate"] for p in doc["pairs"]] == ["v1>v2"]
    assert [s["request_id"] for s in read(r.url, limit=1)["samples"]] == [f"single-{len(singles) - 1}"]
    assert read(r.url, stable="v2", candidate="v1")["rows"] == 0  # a pair is ordered


def test_the_cli_shows_what_the_endpoint_answers(
        start_router: StartRouter, models: dict[str, str], sqlite_url: Callable[[], str],
        disagreeing: list[int], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    r = shadow_router(start_router, models, sqlite_url(), WEB_CONCURRENCY="1")
    sent = disagreeing[:3] + [i for i in range(30) if i not in disagreeing][:5]
    assert predict(r.url, {"X-Request-ID": "cli-check"}, body(sent)).status == 200
    wait_until(compared_rows(r.url, len(sent)), timeout=15)
    monkeypatch.setenv("ROLLOUT_URL", r.url)
    monkeypatch.setenv("ROLLOUT_TOKEN", ADMIN_TOKEN)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = run("disagreements", "--json", "--limit", "2")
    assert code == 0
    assert json.loads(out) == read(r.url, limit=2)

    code, out, _ = run("disagreements")
    assert code == 0
    doc = read(r.url, limit=10)
    lines = out.splitlines()
    assert f"{len(sent)} compared, 3 disagree" in out
    matrix_rows = {line.split()[0]: [int(n) for n in line.split()[1:]] for line in lines
                   if line.strip().split(" ")[0] in ("benign", "malignant")}
    classes = doc["confusion_matrix"]["classes"]
    assert matrix_rows == {c: doc["confusion_matrix"]["counts"][i] for i, c in enumerate(classes)}
    assert sum("cli-check" in line for line in lines) == 3

    code, _, err = run("disagreements", "--stable", "v1")
    assert code == 2 and "--candidate" in err
    code, out, _ = run("disagreements", "--stable", "v9", "--candidate", "v1")
    assert code == 0 and "0 compared" in out and "no disagreeing rows" in out


@pytest.mark.parametrize("query, fragment", [
    ({"limit": "abc"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"stable": "v1"}, "both"),
    ({"candidate": "v2"}, "both"),
    ({"stable": "v1", "candidate": "v2/../x"}, "candidate"),
    ({"stable": "", "candidate": "v2"}, "stable"),
    ({"pair": "v1,v2"}, "unknown"),
])
def test_bad_query_parameters_are_json_400s(shared_router: ServerProcess,
                                            query: dict[str, str], fragment: str) -> None:
    resp = admin("GET", shared_router.url, "/admin/disagreements", params=query)

    assert resp.status_code == 400
    error = error_of(resp)
    assert error["code"] == "bad_query" or error["code"] == "bad_request"
    assert fragment in error["message"]


def test_the_admin_token_is_required(shared_router: ServerProcess) -> None:
    resp = admin("GET", shared_router.url, "/admin/disagreements", token=None)

    assert resp.status_code == 401 and error_of(resp)


def test_under_canary_the_answer_says_pairs_come_from_shadow_traffic(
        one_worker_router: ServerProcess) -> None:
    put_state(one_worker_router.url, "canary", canary_weight=50)
    for _ in range(6):
        assert predict(one_worker_router.url, JSON).status == 200

    doc = read(one_worker_router.url)

    assert doc["strategy"] == "canary" and doc["pairs_from"] == "shadow traffic"
    assert "shadow" in doc["note"] and "one version only" in doc["note"]
