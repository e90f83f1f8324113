"""Hostile input on the data path: bodies that must be refused, headers that must not pass."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from router.app import create_app
from router.config import RouterConfig
from tests.reliability.conftest import Fakes, Gateway, Row
from tests.router.helpers import ADMIN_TOKEN
from tests.reliability.tools import post_raw
from tests.router.helpers import ROW, Answer, error_of
from tests.servers import InProcessServer, ServerProcess

JSON = ("Content-Type", "application/json")
TEN_MB = b'{"instances": [' + b"[0.5]," * (10 * 2**20 // 6) + b"[0.5]]}"


def instances(text: str) -> bytes:
    return b'{"instances": ' + text.encode() + b"}"


ROW_TEXT = json.dumps(ROW)
# name: (body, chunked, the status the issue asks for; None: any 4xx)
HOSTILE_BODIES: dict[str, tuple[bytes, bool, int | None]] = {
    "10 MB with Content-Length": (TEN_MB, False, 413),
    "10 MB chunked, no Content-Length": (TEN_MB, True, 413),
    "malformed JSON": (b'{"instances": [[1.0, 2.0}', False, 400),
    "truncated JSON": (instances(f"[{ROW_TEXT}")[:-1], False, 400),
    "empty body": (b"", False, 400),
    "NaN": (instances(f"[[NaN{ROW_TEXT[ROW_TEXT.index(','):]}]"), False, None),
    "Infinity": (instances(f"[[Infinity{ROW_TEXT[ROW_TEXT.index(','):]}]"), False, None),
    "-Infinity": (instances(f"[[-Infinity{ROW_TEXT[ROW_TEXT.index(','):]}]"), False, None),
    "1e400": (instances(f"[[1e400{ROW_TEXT[ROW_TEXT.index(','):]}]"), False, None),
    "not an object": (json.dumps([ROW]).encode(), False, None),
    "instances not a list": (instances("5"), False, None),
    "no rows": (instances("[]"), False, None),
    "too few features": (instances("[[1.0, 2.0, 3.0]]"), False, None),
    "ragged rows": (instances(json.dumps([ROW, ROW[:5]])), False, None),
    "strings for numbers": (instances(json.dumps([["x"] * len(ROW)])), False, None),
    "rows of objects and arrays": (instances(json.dumps([ROW, {"a": 1}])), False, None),
    "100000 [": (b"[" * 100_000, False, None),
    "100000 [ in instances": (instances("[" * 100_000), False, None),
    "100000 { in instances": (instances('{"a":' * 100_000), False, None),
}
# What the router refuses before choosing an upstream; everything else is the model's to judge.
ROUTER_REFUSES = {
    "10 MB with Content-Length": (TEN_MB, False, ("Content-Type", "application/json")),
    "10 MB chunked, no Content-Length": (TEN_MB, True, ("Content-Type", "application/json")),
    "not JSON by its Content-Type": (b"instances=1", False,
                                     ("Content-Type", "application/x-www-form-urlencoded")),
}


@pytest.mark.slow
@pytest.mark.scenario(10, "hostile bodies at the router and the model service")
def test_hostile_bodies_are_refused_and_never_forwarded(
    gateway: Gateway, v1_service: ServerProcess, fakes: Fakes, scenario: Row
) -> None:
    """Every hostile body gets a JSON 4xx from the router (stable: the real v1) and from the
    model service itself: 413 over the size limit, chunked or not, 400 for malformed JSON. What
    the router refuses itself never reaches an upstream (a recording one, here)."""
    wrong: list[str] = []
    sent = 0
    for name, (body, chunked, wanted) in HOSTILE_BODIES.items():
        at_model = post_raw(v1_service.url, body, [JSON], chunked)
        at_router = post_raw(gateway.url, body, [JSON], chunked)
        sent += 2
        for where, answer in (("model service", at_model), ("router", at_router)):
            if not refused_as(answer, wanted):
                wrong.append(f"{name} at the {where}: {answer.status} {answer.body[:120]!r}")
        if at_router.status != at_model.status:
            wrong.append(f"{name}: the router answered {at_router.status}, v1 {at_model.status}")

    reached = len(fakes.recorder.received)
    for name, (body, chunked, content_type) in ROUTER_REFUSES.items():
        answer = post_raw(gateway.url, body, [content_type, ("X-Route-To", "recorder")], chunked)
        sent += 1
        if not refused_as(answer, 415 if name.startswith("not JSON") else 413):
            wrong.append(f"{name} to the recorder: {answer.status} {answer.body[:120]!r}")
    forwarded = len(fakes.recorder.received) - reached

    scenario.record(sent, len(wrong) + forwarded,
                    f"{len(HOSTILE_BODIES)} bodies refused by both; "
                    f"{forwarded} of {len(ROUTER_REFUSES)} router refusals forwarded")
    assert not wrong, "\n".join(wrong)
    assert forwarded == 0


def refused_as(answer: Answer, status: int | None) -> bool:
    """A JSON error of the contract, with ``status`` (or any 4xx when None)."""
    ok = answer.status == status if status is not None else 400 <= answer.status < 500
    return ok and bool(error_of(answer)["code"])


HOP_BY_HOP = [
    ("Connection", "keep-alive, X-Hop-Secret"),
    ("X-Hop-Secret", "named in Connection"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),
    ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
    ("Authorization", "Bearer the-clients-own-secret"),
]
NEVER_FORWARDED = {"connection", "x-hop-secret", "keep-alive", "te", "trailer", "upgrade",
                   "proxy-authorization", "authorization"}


@contextmanager
def in_process_router(env: dict[str, str]) -> Iterator[InProcessServer]:
    """A router configured from ``env`` (as from the environment), on a real socket here."""
    app = create_app(RouterConfig.from_env(env))
    ctx = app.extensions["router"]
    try:
        with InProcessServer(app) as server:
            yield server
    finally:
        ctx.close()


def forwarded_headers(fakes: Fakes, url: str, headers: list[tuple[str, str]],
                      chunked: bool = False) -> list[tuple[str, str]]:
    """The headers the recorder received for one request sent through the router at ``url``."""
    seen = len(fakes.recorder.received)
    answer = post_raw(url, json.dumps({"instances": [ROW]}).encode(),
                      [JSON, ("X-Route-To", "recorder"), *headers], chunked)
    assert answer.status == 200, answer
    [received] = fakes.recorder.received[seen:]
    return [(name.lower(), value) for name, value in received]


def xff(received: list[tuple[str, str]]) -> list[str]:
    return [value for name, value in received if name == "x-forwarded-for"]


@pytest.mark.scenario(11, "header hygiene: hop-by-hop, credentials, X-Forwarded-For")
def test_hop_by_hop_credentials_and_spoofed_forwarded_for_stop_at_the_router(
    gateway: Gateway, fakes: Fakes, tmp_path: Path, scenario: Row
) -> None:
    """Hop-by-hop headers, those Connection names, and Authorization never reach an upstream. A
    client's X-Forwarded-For is replaced by the peer address unless the peer is one of
    ROUTER_TRUSTED_PROXIES: then the chain is kept and the peer appended."""
    leaks = []
    sent = 0
    for chunked in (False, True):
        received = forwarded_headers(fakes, gateway.url, [*HOP_BY_HOP, ("X-End-To-End", "kept")],
                                     chunked)
        sent += 1
        leaks += [f"{n}: {v}" for n, v in received
                  if n in NEVER_FORWARDED or n.startswith("proxy-")]
        assert ("x-end-to-end", "kept") in received

    spoofed = [("X-Forwarded-For", "203.0.113.66")]
    untrusted = xff(forwarded_headers(fakes, gateway.url, spoofed))
    base_env = {"ROUTER_UPSTREAMS": f"recorder={fakes.recorder.url}"}
    with in_process_router({**base_env, "ROUTER_STATE_URL": f"sqlite:///{tmp_path / 'a.db'}",
                            "ROUTER_TRUSTED_PROXIES": "10.0.0.0/8"}) as elsewhere:
        not_the_peer = xff(forwarded_headers(fakes, elsewhere.url, spoofed))
    with in_process_router({**base_env, "ROUTER_STATE_URL": f"sqlite:///{tmp_path / 'b.db'}",
                            "ROUTER_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1"}) as behind_proxy:
        chained = xff(forwarded_headers(
            fakes, behind_proxy.url, [("X-Forwarded-For", "203.0.113.7, 198.51.100.1")]))
        direct = xff(forwarded_headers(fakes, behind_proxy.url, []))
    sent += 4

    scenario.record(sent, len(leaks) + (untrusted != ["127.0.0.1"]),
                    f"{len(leaks)} hop-by-hop or credential headers forwarded; spoofed "
                    f"X-Forwarded-For -> {untrusted}; from a trusted proxy -> {chained}")
    assert not leaks, f"forwarded to the upstream: {leaks}"
    assert untrusted == ["127.0.0.1"]
    assert not_the_peer == ["127.0.0.1"]
    assert chained == ["203.0.113.7, 198.51.100.1, 127.0.0.1"]
    assert direct == ["127.0.0.1"]


def _raw_exchange(url: str, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request`` as raw bytes, close our sending side, return (response, anything after).

    The server must answer once and then close: whatever it sends after the first response
    (a second answer to leftover bytes, say) comes back as the second item.
    """
    host, port = url.rsplit("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def _cut_bodies(path: str, headers: str, body: bytes) -> dict[str, bytes]:
    start = f"{path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{headers}"
    return {
        "Content-Length longer than the body": (
            f"{start}Content-Length: {len(body) + 100}\r\n\r\n".encode() + body
        ),
        "chunk size not hexadecimal": (
            f"{start}Transfer-Encoding: chunked\r\n\r\n".encode() + b"zz\r\n" + body + b"\r\n0\r\n\r\n"
        ),
        "chunked body without its last chunk": (
            f"{start}Transfer-Encoding: chunked\r\n\r\n".encode() + f"{len(body) + 50:x}\r\n".encode() + body
        ),
    }


def test_bodies_cut_short_or_badly_chunked_get_a_json_400_and_the_connection_closes(
    gateway: Gateway, v1_service: ServerProcess, fakes: Fakes
) -> None:
    """A body that ends before its declared length, or whose chunked framing is broken, is the
    client's error: a JSON 400 ``incomplete_body`` that closes the connection (its byte stream
    can no longer be parsed), never a 500, never forwarded, and no change of state."""
    predict = json.dumps({"instances": [ROW]}).encode()
    patch = json.dumps({"canary_weight": 50}).encode()
    before = gateway.state()
    reached = len(fakes.recorder.received)
    targets = {
        "model service /predict": (v1_service.url, _cut_bodies("POST /predict", "", predict)),
        "router /predict": (
            gateway.url, _cut_bodies("POST /predict", "X-Route-To: recorder\r\n", predict)
        ),
        "router PATCH /admin/state": (
            gateway.url,
            _cut_bodies("PATCH /admin/state", f"Authorization: Bearer {ADMIN_TOKEN}\r\n", patch),
        ),
    }
    wrong = []
    for target, (url, cases) in targets.items():
        for case, request in cases.items():
            response, after = _raw_exchange(url, request)
            head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
            if not head.startswith("http/1.1 400") or "connection: close" not in head:
                wrong.append(f"{target}, {case}: {head.splitlines()[0]} {response[-200:]!r}")
            elif json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]["code"] != "incomplete_body":
                wrong.append(f"{target}, {case}: {response[-200:]!r}")
            if after:
                wrong.append(f"{target}, {case}: more after the answer: {after[:120]!r}")
    assert not wrong, "\n".join(wrong)
    assert len(fakes.recorder.received) == reached
    after_state = gateway.state()
    assert after_state["config_version"] == before["config_version"]
    assert after_state["canary_weight"] == before["canary_weight"]


NOT_HTTP = {
    "not a request line": (b"HELLO\r\n\r\n", 400, "bad_request"),
    "unknown HTTP version": (b"GET /health HTTP/9.9\r\nHost: t\r\n\r\n", 400, "bad_request"),
    "negative Content-Length": (
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: -5\r\n\r\n", 400, "bad_request",
    ),
    "two different Content-Lengths": (
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nContent-Length: 7\r\n\r\n{}", 400, "bad_request",
    ),
    "header line without a colon": (b"GET /health HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n", 400,
                                    "bad_request"),
    "header line over 64 KiB": (b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: " + b"a" * 66_000
                                + b"\r\n\r\n", 400, "bad_request"),
    "request line over 8 KiB": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414,
                                "uri_too_long"),
}


def test_requests_that_are_not_http_get_the_json_error_shape(
    gateway: Gateway, v1_service: ServerProcess
) -> None:
    """What the HTTP server itself refuses (before any endpoint runs) is a JSON error too, with
    a message saying what valid HTTP looks like, and the connection closes."""
    wrong = []
    for where, url in (("model service", v1_service.url), ("router", gateway.url)):
        for case, (request, status, code) in NOT_HTTP.items():
            response, after = _raw_exchange(url, request)
            head, _, body = response.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").lower().splitlines()
            if not lines[0].startswith(f"http/1.1 {status}") or "connection: close" not in lines:
                wrong.append(f"{where}, {case}: {lines}")
            elif "content-type: application/json" not in lines or json.loads(body)["error"]["code"] != code:
                wrong.append(f"{where}, {case}: {response[-200:]!r}")
            if after:
                wrong.append(f"{where}, {case}: more after the answer: {after[:120]!r}")
    assert not wrong, "\n".join(wrong)
