"""The request-header reader installed in gevent's WSGI handler, against http.client's."""

from __future__ import annotations

import io
import socket
from http import client

import pytest

from serving.handler import MAX_HEADERS, RequestHeaders
from tests.servers import ServerProcess

BLOCK = (
    b"Host: example\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"content-length: 12\r\n"
    b"X-Many: one\r\n"
    b"X-Many: two\r\n"
    b"X-Folded: first\r\n"
    b"  second\r\n"
    b"X-Spaced:   padded value  \r\n"
    b"\r\n"
    b"body follows"
)


def test_reads_what_http_client_reads() -> None:
    ours, theirs = RequestHeaders(io.BytesIO(BLOCK), 0), client.parse_headers(io.BytesIO(BLOCK))
    assert ours.status == ""
    for name in ("host", "Content-Type", "CONTENT-LENGTH", "x-many", "X-Spaced", "absent"):
        assert ours.get(name) == (theirs.get(name).strip() if theirs.get(name) else None)
    assert ours.typeheader == "application/json; charset=utf-8"
    assert ours.getheader("Content-Length") == "12"
    assert ours["x-folded"] == "first second"
    assert [line for line in ours.headers if line.startswith("X-Many")] == [
        "X-Many: one\r\n", "X-Many: two\r\n"
    ]
    assert ours.items()[0] == ("Host", "example")


def test_stops_at_the_blank_line() -> None:
    stream = io.BytesIO(BLOCK)
    RequestHeaders(stream, 0)
    assert stream.read() == b"body follows"


def test_the_same_content_length_twice_is_accepted() -> None:
    block = b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n"
    headers = RequestHeaders(io.BytesIO(block), 0)
    assert (headers.status, headers.get("Content-Length")) == ("", "2")


def test_delete_removes_every_copy() -> None:
    headers = RequestHeaders(io.BytesIO(b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n"), 0)
    del headers["content-length"]
    assert "Content-Length" not in headers and list(headers.headers) == []
    with pytest.raises(KeyError):
        del headers["content-length"]


@pytest.mark.parametrize(
    ("block", "status"),
    [
        (b"X-Long: " + b"a" * 70000 + b"\r\n\r\n", "Line too long"),
        (b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n", "Too many headers"),
        (b"no colon here\r\n\r\n", "Invalid header line"),
        (b"Bad Name : v\r\n\r\n", "header name 'Bad Name ' is not a token"),
        (b" leading fold\r\n\r\n", "Continuation line without a header"),
        (b"Content-Length: 2\r\ncontent-length: 7\r\n\r\n", "Conflicting Content-Length headers"),
        (b"X-A\xb5: v\r\n\r\n", "header name 'X-A\xb5' is not a token"),
        (b"\x00X: v\r\n\r\n", "header name '\\x00X' is not a token"),
        (b"X: a\x00b\r\n\r\n", "control byte in the value of 'X'"),
        (b"X: a\rb\r\n\r\n", "control byte in the value of 'X'"),
        (b"X: a\x7f\r\n\r\n", "control byte in the value of 'X'"),
        (b"X: a\r\n b\x0b\r\n\r\n", "control byte in the value of 'X'"),
        (b"Transfer-Encoding: xchunked\r\n\r\n", "Transfer-Encoding 'xchunked' is not served"),
        (b"Transfer-Encoding: chunked, identity\r\n\r\n", "Transfer-Encoding 'chunked, identity'"),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
         "Transfer-Encoding 'chunked, chunked'"),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
         "both Transfer-Encoding and Content-Length"),
        (b"Content-Length: +3\r\n\r\n", "Content-Length '+3' is not a number of bytes"),
        (b"Content-Length: 1_0\r\n\r\n", "Content-Length '1_0' is not a number of bytes"),
        (b"X: v\r\n", "the header block ended before its blank line"),
    ],
    ids=["long-line", "too-many", "no-colon", "space-before-colon", "leading-fold", "two-lengths",
         "obs-text-name", "nul-name", "nul-value", "bare-cr-value", "del-value", "ctl-in-fold",
         "xchunked", "chunked-identity", "te-twice", "te-and-cl", "plus-length",
         "underscore-length", "no-blank-line"],
)
def test_malformed_blocks_set_a_status(block: bytes, status: str) -> None:
    assert RequestHeaders(io.BytesIO(block), 0).status.startswith(status)


def test_obs_text_in_a_value_is_kept_byte_for_byte() -> None:
    headers = RequestHeaders(io.BytesIO(b"X-Name: caf\xe9 \xb5\x85\xa0\r\n\r\n"), 0)
    assert headers.status == ""
    assert headers.get("x-name").encode("latin-1") == b"caf\xe9 \xb5\x85\xa0"


def _raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or (b"200 OK" in answer and not answer.endswith(b"}")):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer


def test_a_server_answers_400_to_a_malformed_header_and_keeps_serving(
    v1_service: ServerProcess,
) -> None:
    assert _raw(v1_service.url, b"GET /health HTTP/1.1\r\nHost example\r\n\r\n").startswith(
        b"HTTP/1.1 400"
    )
    ok = _raw(v1_service.url, b"GET /health HTTP/1.1\r\nHost: example\r\nX-A: b\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200") and b'"ok"' in ok


def test_responses_carry_a_current_date_header(v1_service: ServerProcess) -> None:
    import email.utils
    import time

    import requests

    resp = requests.get(v1_service.url + "/health", timeout=10)
    sent = email.utils.parsedate_to_datetime(resp.headers["Date"]).timestamp()
    assert abs(sent - time.time()) < 5


def test_one_keep_alive_connection_serves_request_after_request(v1_service: ServerProcess) -> None:
    import http.client

    logged = len(v1_service.log())
    host, port = v1_service.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for _ in range(5):
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b'{"status":"ok"}')
            assert conn.sock is not None  # not closed by the server between requests
    finally:
        conn.close()
    assert "Traceback" not in v1_service.log()[logged:]
