"""Replay of a request-smuggling scanner's mutations over raw sockets, against the router (in
front of the real model service) and the model service itself.

Every byte value inserted before, inside and after the name of the header that frames the body
(Transfer-Encoding on a chunked request, Content-Length on a sized one) and before, inside and
after its value; then the scanner's Transfer-Encoding variants. One connection per probe, our
side ended after sending (so a request the server waits on ends as an incomplete body). Every
answer must be a 2xx or a JSON 4xx, no probe may hang, and the service must serve a normal
request afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.serving.wire import Exchange, exchange
from tests.servers import ServerProcess

Build = Callable[[bytes, bytes, bytes], bytes]


@pytest.fixture(scope="module")
def body(v1_service: ServerProcess) -> bytes:
    """One valid row for the served version: a normal request is a 200."""
    features = requests.get(v1_service.url + "/version", timeout=10).json()["feature_names"]
    if isinstance(features, str):  # stored as its repr in some metadata
        features = features.strip("[]").split(",")
    return json.dumps({"instances": [[1.0] * len(features)]}).encode()


@pytest.fixture(scope="module", params=["model_service", "router"])
def service(request: pytest.FixtureRequest) -> ServerProcess:
    name = "v1_service" if request.param == "model_service" else "router_to_model"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def _head(*lines: bytes) -> bytes:
    return b"".join([b"POST /predict HTTP/1.1\r\n", b"Host: scanner\r\n",
                     b"Content-Type: application/json\r\n", *(line + b"\r\n" for line in lines),
                     b"\r\n"])


def _chunked(body: bytes) -> bytes:
    half = len(body) // 2
    return b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])


def _te_probe(body: bytes) -> Build:
    return lambda name, sep, value: _head(name + sep + value) + _chunked(body)


def _cl_probe(body: bytes) -> Build:
    return lambda name, sep, value: _head(name + sep + value) + body


def _mutations(name: bytes, value: bytes) -> Iterator[tuple[bytes, bytes, bytes]]:
    """(name, separator, value) with one byte inserted at each place a scanner tries."""
    cut_n, cut_v = len(name) // 2, len(value) // 2
    for byte in (bytes([b]) for b in range(256)):
        yield byte + name, b": ", value
        yield name[:cut_n] + byte + name[cut_n:], b": ", value
        yield name + byte, b": ", value
        yield name, b":" + byte, value
        yield name, b": ", value[:cut_v] + byte + value[cut_v:]
        yield name, b": ", value + byte


def _te_variants(body: bytes) -> list[bytes]:
    chunked = _chunked(body)
    lines = [
        [b"Transfer-Encoding : chunked"], [b"Transfer-Encoding: xchunked"],
        [b"Transfer-Encoding: chunked, identity"], [b"Transfer-Encoding: identity, chunked"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"],
        [b"Transfer-Encoding: chunked", b"Content-Length: %d" % len(chunked)],
        [b"Content-Length: 4", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding:\r\n chunked"], [b"Transfer-Encoding: chunked\r\n , identity"],
        [b"X-Pad: x\r\n Transfer-Encoding: chunked"], [b" Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: \"chunked\""], [b"Transfer-Encoding: chunk"],
        [b"Transfer-Encoding: cHuNkEd"], [b"Transfer-Encoding:chunked"],
        [b"Transfer-Encoding: chunked;q=0"], [b"Transfer_Encoding: chunked"],
    ]
    for ws in (b"\t", b"\x0b", b"\x0c", b"\x00", b"\x85", b"\xa0", b"\r", b" "):
        lines += [[ws + b"Transfer-Encoding: chunked"], [b"Transfer-Encoding" + ws + b": chunked"],
                  [b"Transfer-Encoding:" + ws + b"chunked"], [b"Transfer-Encoding: chunked" + ws]]
    return [_head(*group) + chunked for group in lines] + [_head(*group) + body for group in lines]


def _problems(raw: bytes, got: Exchange) -> list[str]:
    shown = f"{raw[:300]!r} -> {[(r.status, r.body[:120]) for r in got.responses]}"
    if got.timed_out:
        return [f"hung: {shown}"]
    if not got.responses:
        return [f"no answer: {shown}"]
    bad = [r for r in got.responses
           if not (200 <= r.status < 300 or (400 <= r.status < 500 and r.is_json_error()))]
    return [f"answered {bad[0].status}: {shown}"] if bad else []


def _replay(port: int, probes: list[bytes]) -> list[str]:
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = pool.map(lambda raw: (raw, exchange(port, raw, timeout=15)), probes)
        return [problem for raw, got in results for problem in _problems(raw, got)]


def _still_serves(service: ServerProcess, body: bytes) -> None:
    resp = requests.post(service.url + "/predict", data=body,
                         headers={"Content-Type": "application/json"}, timeout=10)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(("header", "value", "build"), [
    (b"Transfer-Encoding", b"chunked", _te_probe),
    (b"Content-Length", None, _cl_probe),
], ids=["transfer-encoding", "content-length"])
def test_every_byte_around_the_framing_header_is_answered_2xx_or_json_4xx(
    service: ServerProcess, body: bytes, header: bytes, value: bytes | None, build: Callable[[bytes], Build],
) -> None:
    _still_serves(service, body)
    make = build(body)
    probes = [make(*parts) for parts in _mutations(header, value or b"%d" % len(body))]
    problems = _replay(service.port, probes)
    assert not problems, f"{len(problems)} of {len(probes)} probes:\n" + "\n".join(problems[:20])
    _still_serves(service, body)


def test_transfer_encoding_variants_are_answered_2xx_or_json_4xx(
    service: ServerProcess, body: bytes
) -> None:
    probes = _te_variants(body)
    problems = _replay(service.port, probes)
    assert not problems, f"{len(problems)} of {len(probes)} probes:\n" + "\n".join(problems[:20])
    _still_serves(service, body)


def test_an_obs_text_header_value_is_served_and_forwarded(
    service: ServerProcess, body: bytes
) -> None:
    """Bytes 0x80-0xFF in a value are allowed (RFC 9110 obs-text): served, never a 500."""
    raw = _head(b"X-Note: caf\xe9 \xb5\xff", b"Content-Length: %d" % len(body)) + body
    got = exchange(service.port, raw)
    assert [r.status for r in got.responses] == [200], got
