"""The response-head reader's fast path (a whole block of plain ``token:value`` lines, checked in
one pass) reads every head exactly as the line-by-line reader does, and refuses what it refuses."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from router.upstream import ProtocolError, _header_lines, _parse_head, _split_head

PIECES = [b"A", b"x-b", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x00", b"\x01", b"\x80",
          b"\xff", b"v", b"-", b"\x7f", b"(", b"\r\n ", b"\r\n\t", b"Content-Length: 5"]


def line_by_line(block: bytes) -> tuple[str, list[tuple[str, str]]] | str:
    try:
        lines = _split_head(block)
        return lines[0], _header_lines(lines[1:])
    except ProtocolError:
        return "refused"


def fast(block: bytes) -> tuple[str, list[tuple[str, str]]] | str:
    try:
        return _parse_head(block)
    except ProtocolError:
        return "refused"


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(PIECES), max_size=14), st.booleans())
def test_the_fast_path_reads_as_the_line_reader(pieces: list[bytes], ends_in_cr: bool) -> None:
    block = b"HTTP/1.1 200 OK" + b"".join(pieces) + (b"\r" if ends_in_cr else b"")
    assert fast(block) == line_by_line(block), block


def test_a_plain_head_is_read_whole() -> None:
    block = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Model-Version:  v1 \t\r\n"
             b"Content-Length: 110\r\nEmpty:\r\n")[:-1]  # as cut at the blank line's search
    assert _parse_head(block) == ("HTTP/1.1 200 OK", [
        ("Content-Type", "application/json"), ("X-Model-Version", "v1"),
        ("Content-Length", "110"), ("Empty", "")])
