"""Differential tests of request framing: the serving layer and the router against h11 and llhttp.

Each generated request (Transfer-Encoding and Content-Length in every combination, folded lines,
bare LFs, whitespace and control bytes around names and values, duplicates, chunk extensions
and trailers) is sent with a sentinel request pipelined after it on one connection. A server
must either refuse the request with a JSON 4xx, or read it as the reference parsers do: the
same body reaches the app (the echo app; for the router, the recording upstream), and the
next thing answered is the sentinel. A disagreement fails with the request printed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.wire import (
    SENTINEL, Exchange, Parsed, Response, exchange, parse_h11, parse_llhttp,
)
from tests.servers import ServerProcess

EXAMPLES = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

_WS = [b"", b"", b"", b" ", b"\t", b"\x0b", b"\x0c", b"\x00", b"\r", b"\x85", b"\xa0", b"  "]
_TE_VALUES = [b"chunked", b"Chunked", b"CHUNKED", b"chunked, identity", b"identity, chunked",
              b"xchunked", b"chunked,", b"gzip, chunked", b"identity", b"", b"chunked;q=1",
              b"chunked chunked", b'"chunked"']
_TE_NAMES = [b"Transfer-Encoding", b"transfer-encoding", b"Transfer_Encoding", b"TE",
             b"Transfer-Encodin"]
_CL_NAMES = [b"Content-Length", b"content-length", b"Content_Length", b"Content-Lengt"]
_NOISE_NAMES = [b"X-Noise", b"Accept", b"X-User-ID", b"X-Request-ID", b"Connection",
                b"Expect", b"Trailer", b"Upgrade"]


def _around(draw: st.DrawFn, text: bytes) -> bytes:
    return draw(st.sampled_from(_WS)) + text + draw(st.sampled_from(_WS))


def _chunked(draw: st.DrawFn, body: bytes) -> bytes:
    out = b""
    rest = body
    while rest:
        size = draw(st.integers(1, max(1, len(rest))))
        piece, rest = rest[:size], rest[size:]
        size_text = draw(st.sampled_from([b"%x", b"%X", b"0%x", b"%x "])) % len(piece)
        ext = draw(st.sampled_from([b""] * 6 + [b";a=b", b";a", b';a="q"', b"; a=b", b";a=\x01",
                                                b";a\rb", b";\xb5", b";a\nb", b';a="\n"', b" ",
                                                b";a=b ", b"\t;a"]))
        end = draw(st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r"]))
        out += size_text + ext + b"\r\n" + piece + end
    out += draw(st.sampled_from([b"0", b"00", b"0;a=b"])) + b"\r\n"
    trailers = draw(st.sampled_from([b""] * 4 + [b"X-T: v\r\n", b"X-T: \xb5\r\n", b"bad trailer\r\n",
                                                 b"X-T: v\r\n folded\r\n", b"X-T: a b\r\n",
                                                 b"Content-Length: 5\r\n", b"X-T: a\x00\r\n",
                                                 b"X-T: a\x7f\r\n", b"X-T: a\nb\r\n"]))
    return out + trailers + draw(st.sampled_from([b"\r\n"] * 8 + [b"\n", b""]))


@st.composite
def requests(draw: st.DrawFn, path: bytes) -> bytes:
    """One request head and body, framed in any of the ways a desync scanner tries."""
    body = draw(st.sampled_from([b'{"instances": [[1, 2]]}', b"{}", b"", b"x" * 20,
                                 b'{"a": "0\\r\\n\\r\\n"}']))
    lines: list[bytes] = [b"Host: example", b"Content-Type: application/json"]
    te_lines = []
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(_TE_NAMES))
        value = _around(draw, draw(st.sampled_from(_TE_VALUES)))
        te_lines.append(_around(draw, name) if draw(st.booleans()) else name)
        te_lines[-1] += b":" + value
    plain_chunked = draw(st.integers(0, 2)) == 0
    if plain_chunked:  # often the one framing served alone, to reach the chunk parser
        te_lines = [b"Transfer-Encoding: chunked"]
    lines += te_lines
    for _ in range(0 if plain_chunked else draw(st.integers(0, 2))):
        name = draw(st.sampled_from(_CL_NAMES))
        number = str(len(body) + draw(st.sampled_from([0, 0, 0, 0, -1, 1, 7]))).encode()
        value = draw(st.sampled_from([b"%s", b"+%s", b"0%s", b"%s, %s", b"%s_0", b"-%s"]))
        lines.append(name + b":" + _around(draw, value.replace(b"%s", number)))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(_NOISE_NAMES) | st.binary(min_size=1, max_size=4))
        value = draw(st.sampled_from([b"v", b"caf\xe9", b"a, b", b"close", b"100-continue"])
                     | st.binary(max_size=6))
        line = _around(draw, name) + b":" + _around(draw, value)
        if draw(st.integers(0, 4)) == 0:
            line += b"\r\n" + draw(st.sampled_from([b" ", b"\t"])) + b"folded"
        lines.append(line.replace(b"\n", b"n"))
    lines = draw(st.permutations(lines))
    head = b"POST " + path + b" HTTP/1.1\r\n"
    for line in lines:
        head += line + draw(st.sampled_from([b"\r\n"] * 10 + [b"\n"]))
    head += draw(st.sampled_from([b"\r\n"] * 10 + [b"\n"]))
    chunked = any(b"chunked" in line.lower() for line in te_lines)
    if chunked and draw(st.integers(0, 5)):
        return head + _chunked(draw, body)
    return head + body


def _reference(raw: bytes) -> Parsed | None:
    """How the reference parsers read ``raw``: the accepting one's reading (h11 first), or
    None when both refuse it."""
    for parsed in (parse_h11(raw), parse_llhttp(raw)):
        if parsed.body is not None:
            return parsed
    return None


def _check(raw: bytes, got: Exchange, body_of: Callable[[Response], bytes]) -> None:
    """Refused with a JSON 4xx, or read as the references read it; else fail, printing it.

    Read as they read it: the same body, and then the sentinel answered if the references end
    the request where the sentinel begins, else what follows refused as not HTTP.
    """
    shown = f"request: {raw!r}\nanswers: {got.responses!r} timed out: {got.timed_out}"
    assert not got.timed_out, shown
    assert got.responses, "no answer\n" + shown
    assert not got.garbage, shown
    first, *more = got.responses
    ref = _reference(raw)
    if 400 <= first.status < 500:
        assert first.is_json_error(), "a 4xx that is not the JSON error shape\n" + shown
    else:
        assert first.status == 200, shown
        assert ref is not None, "accepted a request both references refuse\n" + shown
        assert body_of(first) == ref.body, "a different body than the references read\n" + shown
    if first.closes:
        assert not more, "answered after saying it closes\n" + shown
        return
    assert len(more) == 1, "the rest of the connection was not answered once\n" + shown
    if ref is not None and ref.then_sentinel:
        assert more[0].status == 200, "the sentinel was not what came next\n" + shown
    else:
        assert more[0].status != 200 and more[0].is_json_error(), (
            "served a request where the references see none\n" + shown)


def _echoed(resp: Response) -> bytes:
    return bytes.fromhex(resp.json()["body"])


@EXAMPLES
@given(raw=requests(b"/echo"))
def test_the_serving_layer_reads_requests_as_the_references_do(
    echo_server: ServerProcess, raw: bytes
) -> None:
    _check(raw, exchange(echo_server.port, raw + SENTINEL), _echoed)


@EXAMPLES
@given(raw=requests(b"/predict"))
def test_the_router_forwards_the_body_the_references_read(
    router_to_echo: ServerProcess, raw: bytes
) -> None:
    _check(raw, exchange(router_to_echo.port, raw + SENTINEL), _echoed)


@EXAMPLES
@given(raw=requests(b"/predict"))
def test_the_model_service_ends_requests_where_the_references_do(
    v1_service: ServerProcess, raw: bytes
) -> None:
    got = exchange(v1_service.port, raw + SENTINEL)
    assert all(r.status != 200 for r in got.responses[:1]), got  # no body here is a valid input
    _check(raw, got, _echoed)


_CHUNKED = b"POST /echo HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("chunks", [
    b"2;a\nb\r\nab\r\n0\r\n\r\n",
    b"2\r\nab\r\n0\r\nX: a\x00\r\n\r\n",
], ids=["lf-in-chunk-extension", "nul-in-trailer"])
def test_chunk_framing_both_references_refuse_is_refused(
    echo_server: ServerProcess, chunks: bytes
) -> None:
    raw = _CHUNKED + chunks
    assert _reference(raw) is None, "a reference reads it: not a case of this test"
    got = exchange(echo_server.port, raw + SENTINEL)
    _check(raw, got, _echoed)
    assert 400 <= got.responses[0].status < 500, got


@pytest.mark.parametrize("chunks", [
    b"2;a=\x01\r\nab\r\n0\r\n\r\n",
    b"2 \r\nab\r\n0\r\n\r\n",
    b"2; a=b\r\nab\r\n0\r\n\r\n",
    b"2\r\nab\r\n0\r\nX: a\x7f\r\n\r\n",
    b"2\r\nab\r\n0\r\nX: a\r\n folded\r\n\r\n",
], ids=["control-byte-in-extension", "space-after-size", "space-in-extension", "del-in-trailer",
        "folded-trailer"])
def test_chunk_framing_outside_the_grammar_is_refused(echo_server: ServerProcess,
                                                      chunks: bytes) -> None:
    # h11 reads each of these (any bytes after ';', whitespace, any trailer value); llhttp and
    # the grammar of RFC 9112 do not
    raw = _CHUNKED + chunks
    got = exchange(echo_server.port, raw + SENTINEL)
    _check(raw, got, _echoed)
    assert got.responses[0].status == 400 and got.responses[0].closes, got


@pytest.mark.parametrize("chunks, body", [
    (b"4;note=\"a b\"\r\nwiki\r\n0\r\nX-Sum: 1\r\n\r\n", b"wiki"),
    (b"2;a;b=c\r\nab\r\n1;x=\"\\q\"\r\nc\r\n0\r\n\r\n", b"abc"),
    (b"A\r\n0123456789\r\n00\r\n\r\n", b"0123456789"),
], ids=["quoted-extension-and-trailer", "extensions", "upper-hex"])
def test_chunk_framing_the_references_read_is_read_alike(
    echo_server: ServerProcess, chunks: bytes, body: bytes
) -> None:
    raw = _CHUNKED + chunks
    assert _reference(raw) is not None and _reference(raw).body == body
    got = exchange(echo_server.port, raw + SENTINEL)
    _check(raw, got, _echoed)
    assert _echoed(got.responses[0]) == body
