"""The data path through a real router: forcing a version, headers, fallback, timeouts, limits."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sklearn.datasets import load_breast_cancer

from tests.router.conftest import StartRouter, running_router, seed_state
from tests.router.helpers import (
    JSON,
    PREDICT_BODY,
    Answer,
    Client,
    FakeUpstream,
    assert_answered_by,
    error_of,
    kill_tree,
    metric,
    post_many,
    predict,
    put_state,
    refuses_connections,
    remove_runtime_dirs,
)
from tests.servers import ServerProcess, model_service, settled, wait_until

MAX_BODY = 512 * 1024
TIMEOUT_S = 3


@pytest.fixture(scope="module")
def recorder() -> Iterator[FakeUpstream]:
    """Records what reaches it, and answers with hop-by-hop headers a proxy must not pass on."""
    with FakeUpstream("recorder", response_headers=[
        ("Connection", "X-Upstream-Private"), ("X-Upstream-Private", "secret"),
        ("Keep-Alive", "timeout=99"), ("Proxy-Authenticate", "Basic"), ("Proxy-Status", "x"),
        ("Trailer", "X-Checksum"), ("Upgrade", "h2c"), ("X-End-To-End", "kept"),
    ]) as fake:
        yield fake


@pytest.fixture(scope="module")
def slow() -> Iterator[FakeUpstream]:
    with FakeUpstream("slow", delay_s=60) as fake:
        yield fake


@pytest.fixture(scope="module")
def failing() -> Iterator[FakeUpstream]:
    with FakeUpstream("failing", status=500) as fake:
        yield fake


@pytest.fixture(scope="module")
def framed() -> Iterator[dict[str, FakeUpstream]]:
    """Upstreams that end their bodies otherwise than with Content-Length."""
    with FakeUpstream("chunked", framing="chunked") as chunked, \
            FakeUpstream("closing", framing="close") as closing:
        yield {"chunked": chunked, "closing": closing}


@pytest.fixture(scope="module")
def data_router(models: dict[str, str], recorder: FakeUpstream, slow: FakeUpstream,
                failing: FakeUpstream, framed: dict[str, FakeUpstream], log_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Release-in-place with the real v1 stable and v2 candidate; the other versions misbehave
    and are reached with X-Route-To."""
    upstreams = {**models, "recorder": recorder.url, "slow": slow.url, "failing": failing.url,
                 **{label: fake.url for label, fake in framed.items()}}
    state = f"sqlite:///{tmp_path_factory.mktemp('data-router') / 'state.db'}"
    with running_router(upstreams, log_dir, state, ROUTER_TIMEOUT_S=str(TIMEOUT_S),
                        ROUTER_MAX_BODY_BYTES=str(MAX_BODY)) as server:
        yield server


# -- X-Route-To --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_route_to_forces_a_version(data_router: ServerProcess, version: str) -> None:
    assert_answered_by(post_many(data_router.url, [{"X-Route-To": version}] * 20), version)


def test_route_to_an_unknown_version_is_a_json_404(data_router: ServerProcess) -> None:
    answer = predict(data_router.url, {"X-Route-To": "v9"})
    assert answer.status == 404
    error = error_of(answer)
    assert error["code"] == "unknown_version"
    assert all(label in error["message"] for label in ("v1", "v2", "recorder"))


def test_route_to_is_ignored_when_disabled(locked_down_router: ServerProcess) -> None:
    assert_answered_by(post_many(locked_down_router.url, [{"X-Route-To": "v2"}] * 20), "v1")
    assert_answered_by(post_many(locked_down_router.url, [{"X-Route-To": "v9"}] * 5), "v1")


# -- response headers --------------------------------------------------------------------------


def request_ids_received(fake: FakeUpstream, since: int) -> list[list[str]]:
    return [[v for n, v in headers if n.lower() == "x-request-id"]
            for headers in fake.received[since:]]


def test_request_id_is_propagated_when_given(data_router: ServerProcess,
                                             recorder: FakeUpstream) -> None:
    seen = len(recorder.received)
    answer = predict(data_router.url, {"X-Route-To": "recorder", "X-Request-ID": "req-42.a:b"})
    assert answer.status == 200
    assert answer.headers["x-request-id"] == "req-42.a:b"
    assert answer.version == "recorder"
    assert request_ids_received(recorder, seen) == [["req-42.a:b"]]


@pytest.mark.parametrize("given", [None, "", "has spaces", "x" * 200, "semi;colon"],
                         ids=["absent", "empty", "spaces", "too long", "semicolon"])
def test_request_id_is_generated_when_absent_or_unusable(
    data_router: ServerProcess, recorder: FakeUpstream, given: str | None
) -> None:
    headers = {"X-Route-To": "recorder"}
    if given is not None:
        headers["X-Request-ID"] = given
    seen = len(recorder.received)
    first, second = predict(data_router.url, headers), predict(data_router.url, headers)
    generated = first.headers["x-request-id"]
    assert generated and generated != given
    assert second.headers["x-request-id"] != generated
    # The model service hears exactly the id the client was told, once.
    assert request_ids_received(recorder, seen) == [[generated], [second.headers["x-request-id"]]]


def test_model_version_names_who_answered(data_router: ServerProcess) -> None:
    for answer in post_many(data_router.url, [{"X-Route-To": "v2"}, {}] * 10):
        assert answer.status == 200
        assert answer.version == answer.json()["model_version"]


# -- fallback ----------------------------------------------------------------------------------


@pytest.mark.parametrize("candidate,reason", [("down", "refused"), ("dropping", "reset")])
def test_canary_falls_back_to_stable_when_the_candidate_cannot_answer(
    one_worker_router: ServerProcess, candidate: str, reason: str
) -> None:
    r = one_worker_router
    put_state(r.url, "canary", candidate=candidate, canary_weight=100)
    counted = {
        "errors": lambda: metric(r.url, "router_upstream_errors_total", version=candidate,
                                 reason=reason),
        "v1 answers": lambda: metric(r.url, "router_requests_total", version="v1", code="200"),
        "candidate answers": lambda: metric(r.url, "router_requests_total", version=candidate),
    }
    before = {name: count() for name, count in counted.items()}

    answers = post_many(r.url, [{}] * 40 + [{"X-User-ID": f"u{i}"} for i in range(40)])
    assert_answered_by(answers, "v1")
    grown = {name: count() - before[name] for name, count in counted.items()}
    assert grown["errors"] >= 80
    assert (grown["v1 answers"], grown["candidate answers"]) == (80, 0)

    # A forced version is the client's explicit choice: no fallback, a JSON 502 instead.
    forced = predict(r.url, {"X-Route-To": candidate})
    assert forced.status == 502
    assert error_of(forced)["code"] == "upstream_unreachable"


@pytest.mark.slow
def test_candidate_killed_mid_run_costs_no_client_errors(
    start_router: StartRouter, v1_service: ServerProcess, artifacts: Path, log_dir: Path,
    sqlite_url: Callable[[], str],
) -> None:
    with model_service("v2", artifacts, log_dir, WEB_CONCURRENCY="1") as candidate:
        candidate.wait_ready()
        upstreams = {"v1": v1_service.url, "v2": candidate.url}
        url = seed_state(sqlite_url(), upstreams, strategy="canary", canary_weight=100)
        r = start_router(upstreams, state_url=url)
        answers: list[Answer] = []
        stop = threading.Event()
        killed_at: list[float] = []
        killed: list[int] = []

        def load() -> None:
            client = Client(r.url)
            try:
                while not stop.is_set():
                    answers.append(client.predict())
            finally:
                client.close()

        with ThreadPoolExecutor(4) as pool:
            running = [pool.submit(load) for _ in range(4)]
            try:
                wait_until(lambda: sum(a.version == "v2" for a in answers) >= 40, timeout=30)
                killed = kill_tree(candidate.proc.pid)
                candidate.proc.wait(10)
                wait_until(lambda: refuses_connections(candidate.url), timeout=10)
                killed_at.append(time.monotonic())
                count = len(answers)
                wait_until(lambda: len(answers) >= count + 100, timeout=30)
            finally:
                stop.set()
                for future in running:
                    future.result()
                remove_runtime_dirs(killed)

    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} client errors, e.g. {failed[0]}"
    assert all(a.version == a.json()["model_version"] for a in answers)
    after = [a for a in answers if a.sent_at > killed_at[0]]
    assert len(after) >= 100
    assert_answered_by(after, "v1")
    assert metric(r.url, "router_upstream_errors_total", version="v2") >= 1


# -- timeout and upstream errors ---------------------------------------------------------------


def test_timeout_is_a_json_504_while_other_versions_keep_answering(
    data_router: ServerProcess, slow: FakeUpstream
) -> None:
    timeouts = {"version": "slow", "reason": "timeout"}
    before = metric(data_router.url, "router_upstream_errors_total", **timeouts)
    reached = len(slow.received)
    with ThreadPoolExecutor(2) as pool:
        # The slow upstream would answer after 60 s; the client waits 7 s longer than the budget.
        stuck = pool.submit(post_many, data_router.url, [{"X-Route-To": "slow"}] * 4, 4,
                            PREDICT_BODY, TIMEOUT_S + 7)
        wait_until(lambda: len(slow.received) > reached, timeout=10)  # the slow ones are in flight
        fine = pool.submit(post_many, data_router.url, [{}] * 40, 2)
        timed_out, answered = stuck.result(), fine.result()

    for answer in timed_out:
        assert answer.status == 504, answer
        assert error_of(answer)["code"] == "upstream_timeout"
    assert_answered_by(answered, "v1")
    after = metric(data_router.url, "router_upstream_errors_total", **timeouts)
    assert after - before == 4


def test_upstream_5xx_passes_through_and_is_counted(
    data_router: ServerProcess, failing: FakeUpstream
) -> None:
    before = metric(data_router.url, "router_upstream_errors_total", version="failing",
                    reason="http_5xx")
    answers = post_many(data_router.url, [{"X-Route-To": "failing"}] * 10)
    for answer in answers:
        assert answer.status == 500
        assert answer.body == failing.body
        assert answer.version == "failing"
    after = metric(data_router.url, "router_upstream_errors_total", version="failing",
                   reason="http_5xx")
    assert after - before == 10
    assert settled(
        lambda: metric(data_router.url, "router_requests_total", version="failing", code="500")
    ) >= 10


# -- what the upstream's answer looks like on the wire ------------------------------------------


@pytest.mark.parametrize("label", ["chunked", "closing"])
def test_upstream_bodies_without_content_length_arrive_whole(
    data_router: ServerProcess, framed: dict[str, FakeUpstream], label: str
) -> None:
    for answer in post_many(data_router.url, [{"X-Route-To": label}] * 12, threads=3):
        assert answer.status == 200, answer
        assert answer.version == label
        assert answer.body == framed[label].body
        assert answer.headers["content-length"] == str(len(answer.body))
        assert "transfer-encoding" not in answer.headers


def test_batch_bigger_than_a_socket_buffer_goes_through_unchanged(
    data_router: ServerProcess, v1_service: ServerProcess
) -> None:
    rows = (load_breast_cancer().data.tolist() * 3)[:1600]
    body = json.dumps({"instances": rows}).encode()
    expected = predict(v1_service.url, body=body)
    assert expected.status == 200 and len(body) > 65536 and len(expected.body) > 65536
    for answer in post_many(data_router.url, [{}] * 4, threads=2, body=body):
        assert answer.status == 200
        assert answer.body == expected.body


def test_expect_100_continue_gets_its_own_answer(
    data_router: ServerProcess, v1_service: ServerProcess
) -> None:
    """A client that sends Expect gets its answer, and the next client gets the next answer."""
    data = load_breast_cancer().data
    for start, rows in [(0, 3), (100, 1), (200, 2), (300, 1)]:
        body = json.dumps({"instances": data[start:start + rows].tolist()}).encode()
        expected = predict(v1_service.url, body=body).body
        answer = predict(data_router.url, {"Expect": "100-continue"}, body, timeout=5)
        assert (answer.status, answer.body) == (200, expected), answer
        other = json.dumps({"instances": data[start + 50:start + 51].tolist()}).encode()
        assert predict(data_router.url, body=other).body == predict(v1_service.url, body=other).body


# -- header hygiene ----------------------------------------------------------------------------

HOP_BY_HOP_REQUEST = [
    ("Connection", "keep-alive, X-Hop-Secret"),
    ("X-Hop-Secret", "only for the next hop"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),
    ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
    ("Proxy-Connection", "keep-alive"),
    ("Authorization", "Bearer admin-secret"),
]
NEVER_FORWARDED = {
    "connection", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization",
    "proxy-connection", "x-hop-secret", "authorization", "transfer-encoding",
}


def send_raw(url: str, headers: list[tuple[str, str]], chunked: bool = False) -> Answer:
    """POST /predict with exactly these headers (requests would add or merge some)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("POST", "/predict")
        for name, value in headers:
            conn.putheader(name, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for piece in (PREDICT_BODY[:10], PREDICT_BODY[10:]):
                conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        else:
            conn.putheader("Content-Length", str(len(PREDICT_BODY)))
            conn.endheaders(PREDICT_BODY)
        resp = conn.getresponse()
        return Answer(resp.status, {n.lower(): v for n, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_hop_by_hop_headers_and_credentials_never_reach_the_upstream(
    data_router: ServerProcess, recorder: FakeUpstream, chunked: bool
) -> None:
    seen = len(recorder.received)
    headers = [("Content-Type", "application/json"), ("X-Route-To", "recorder"),
               ("X-User-ID", "alice"), ("X-Custom", "end-to-end"), *HOP_BY_HOP_REQUEST]
    answer = send_raw(data_router.url, headers, chunked)
    assert answer.status == 200, answer

    [received] = recorder.received[seen:]
    names = [n.lower() for n, _ in received]
    assert not NEVER_FORWARDED & set(names), f"forwarded: {NEVER_FORWARDED & set(names)}"
    assert not [n for n in names if n.startswith("proxy-")]
    as_dict = dict((n.lower(), v) for n, v in received)
    assert as_dict["x-user-id"] == "alice" and as_dict["x-custom"] == "end-to-end"
    assert as_dict["content-type"] == "application/json"
    assert as_dict["content-length"] == str(len(PREDICT_BODY))
    assert len(names) == len(set(names)), f"a header was sent twice: {names}"


def test_hop_by_hop_headers_from_the_upstream_never_reach_the_client(
    data_router: ServerProcess
) -> None:
    answer = predict(data_router.url, {"X-Route-To": "recorder"})
    assert answer.status == 200
    leaked = {"x-upstream-private", "keep-alive", "proxy-authenticate", "proxy-status", "trailer",
              "upgrade", "transfer-encoding"} & set(answer.headers)
    assert not leaked, f"hop-by-hop headers reached the client: {leaked}"
    assert "x-upstream-private" not in answer.headers.get("connection", "").lower()
    assert answer.headers["x-end-to-end"] == "kept"
    assert answer.headers["content-length"] == str(len(answer.body))


# -- request limits and errors -----------------------------------------------------------------


def big_body() -> bytes:
    body = json.dumps({"instances": load_breast_cancer().data.tolist() * 4}).encode()
    assert len(body) > MAX_BODY
    return body


def test_body_over_the_limit_is_a_json_413(data_router: ServerProcess) -> None:
    answer = predict(data_router.url, body=big_body())
    assert answer.status == 413
    assert error_of(answer)["code"] == "payload_too_large"
    assert predict(data_router.url).status == 200  # the limit is not the problem of smaller bodies


def test_chunked_body_over_the_limit_is_a_json_413(data_router: ServerProcess) -> None:
    body = big_body()
    pieces = (body[i:i + 65536] for i in range(0, len(body), 65536))
    resp = requests.post(data_router.url + "/predict", data=pieces, headers=JSON, timeout=10)
    assert resp.status_code == 413
    assert error_of(resp)["code"] == "payload_too_large"


def test_chunked_body_under_the_limit_is_forwarded(data_router: ServerProcess) -> None:
    pieces = (PREDICT_BODY[i:i + 100] for i in range(0, len(PREDICT_BODY), 100))
    resp = requests.post(data_router.url + "/predict", data=pieces, headers=JSON, timeout=10)
    assert resp.status_code == 200
    assert resp.json()["model_version"] == resp.headers["X-Model-Version"] == "v1"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_a_json_415(data_router: ServerProcess,
                                          content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    resp = requests.post(data_router.url + "/predict", data=PREDICT_BODY, headers=headers,
                         timeout=10)
    assert resp.status_code == 415
    assert error_of(resp)["code"] == "unsupported_media_type"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_on_predict_are_a_json_405(data_router: ServerProcess, method: str) -> None:
    resp = requests.request(method, data_router.url + "/predict", timeout=10)
    assert resp.status_code == 405
    assert error_of(resp)["code"] == "method_not_allowed"
    assert "POST" in resp.headers["Allow"]


@pytest.mark.parametrize("method,path", [("GET", "/nope"), ("POST", "/predict/extra"),
                                         ("POST", "/admin/nope")])
def test_unknown_path_is_a_json_404(data_router: ServerProcess, method: str, path: str) -> None:
    resp = requests.request(method, data_router.url + path, json={}, timeout=10)
    assert resp.status_code == 404
    assert error_of(resp)["code"] == "not_found"
