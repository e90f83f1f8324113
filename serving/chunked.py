"""A strict reader of chunked request bodies (RFC 9112 section 7.1), in place of gevent's.

gevent's ``pywsgi.Input`` skips a chunk extension up to the next CR, so a bare LF (or any other
byte) inside one passes, and it checks only the names of trailer fields, so a control byte in a
trailer's value passes too. Both are framing that the reference parsers (h11, llhttp) refuse,
and a proxy in front that reads such a body differently could end a request elsewhere (the
ambiguity request smuggling relies on). :class:`ChunkedInput` reads each chunk-size line and
each trailer line whole, against the grammar (RFC 9112's, without the optional whitespace around
an extension's ";" and "=", which llhttp refuses too):

    chunk-size line = 1*16HEXDIG *( ";" token [ "=" ( token / quoted-string ) ] ) CRLF
    trailer line    = token ":" OWS field-value OWS CRLF     (no control bytes, no folding)

Anything else ends the body with ``_InvalidClientInput``: the application's body reader answers
the contract's JSON 400, and the handler closes the connection without reading on (its state is
unknown). The rest is gevent's ``Input``: ``Expect: 100-continue``, ``read``, ``readline``,
draining an unread body after the response. The gevent names this relies on are listed in
``serving.private``.

    >>> import io
    >>> body = io.BytesIO(b"4;note=\\"a b\\"\\r\\nwiki\\r\\n0\\r\\nX-Sum: 1\\r\\n\\r\\n")
    >>> ChunkedInput(body, None, chunked_input=True).read()
    b'wiki'
"""

from __future__ import annotations

import re
from typing import Any

from gevent.pywsgi import Input, _InvalidClientInput

MAX_LINE = 8192  # a chunk-size line or a trailer line, its CRLF included
MAX_TRAILERS = 100

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
_TRAILER = re.compile(_TOKEN + rb":[\t \x21-\x7e\x80-\xff]*")


class ChunkedInput(Input):  # type: ignore[misc]
    """gevent's request body stream with a strict chunk reader; for chunked bodies only."""

    __slots__ = ()

    def _chunked_read(self, length: int | None = None, use_readline: bool = False) -> bytes:
        rfile = self.rfile
        self._send_100_continue()
        if length == 0:
            return b""
        reader = rfile.readline if use_readline else rfile.read
        response = []
        while self.chunk_length != 0:
            left = self.chunk_length - self.position
            if left <= 0:  # at the start of a chunk: its size line
                self.chunk_length = self._size_line(rfile)
                self.position = 0
                continue
            if length is not None and length < left:
                left = length
            data = reader(left)
            if not data:
                self._refuse("the body ended inside a chunk")
            response.append(data)
            self.position += len(data)
            if self.position == self.chunk_length:
                if rfile.read(2) != b"\r\n":
                    self._refuse("a chunk's data is not followed by CRLF")
            if length is not None:
                length -= len(data)
                if length == 0:
                    break
            if use_readline and data.endswith(b"\n"):
                break
        return b"".join(response)

    def _line(self, rfile: Any, what: str) -> bytes:
        raw = rfile.readline(MAX_LINE + 1)
        if len(raw) > MAX_LINE:
            self._refuse(f"a {what} is over {MAX_LINE} bytes")
        if not raw.endswith(b"\r\n"):
            self._refuse(f"a {what} does not end in CRLF" if raw.endswith(b"\n")
                         else "the body ended inside the chunked framing")
        return raw[:-2]  # type: ignore[no-any-return]

    def _size_line(self, rfile: Any) -> int:
        line = self._line(rfile, "chunk-size line")
        match = _SIZE_LINE.fullmatch(line)
        if match is None:
            self._refuse(f"chunk-size line {line[:40]!r} is not a hexadecimal size with optional "
                         "';name=value' extensions")
        size = int(match[1], 16)
        if size == 0:
            self._trailers(rfile)
        return size

    def _trailers(self, rfile: Any) -> None:
        for _ in range(MAX_TRAILERS + 1):
            line = self._line(rfile, "trailer line")
            if not line:
                return
            if _TRAILER.fullmatch(line) is None:
                self._refuse(f"trailer line {line[:40]!r} is not 'Name: value' with visible "
                             "characters, spaces and tabs only")
        self._refuse(f"more than {MAX_TRAILERS} trailer lines")

    def _refuse(self, why: str) -> Any:
        self._chunked_input_error = True  # the stream's state is unknown: nothing more is read
        self.chunk_length = 0
        raise _InvalidClientInput(why)
