"""Reading a JSON request body safely: content type, size limit (chunked too), strict JSON."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Request
from werkzeug.exceptions import ClientDisconnected

from common.errors import BadRequest, IncompleteBody, PayloadTooLarge, UnsupportedMediaType

_READ_CHUNK = 64 * 1024


def read_environ_body(environ: dict[str, Any], max_bytes: int) -> bytes:
    """The raw body, refusing more than ``max_bytes`` whether or not Content-Length is sent
    (chunked bodies arrive without CONTENT_LENGTH), and a body cut short as a 400."""
    raw_length = environ.get("CONTENT_LENGTH") or ""
    try:
        length = int(raw_length) if raw_length else None
    except ValueError:
        raise BadRequest(f"Content-Length {raw_length!r} is not a number") from None
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"request body is {length} bytes; the limit is {max_bytes} bytes")
    stream = environ["wsgi.input"]
    try:
        if length is not None:
            body = stream.read(length) if length > 0 else b""
            if len(body) < length:
                raise OSError("the body ended early")
            return body
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = stream.read(_READ_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
            chunks.append(chunk)
    except (OSError, ValueError, ClientDisconnected):
        # gevent's chunk reader raises ValueError, not its IOError, on an empty chunk-size line
        if length is not None:
            raise IncompleteBody(
                f"the request body ended before its Content-Length of {length} bytes; "
                "send the whole body, or a Content-Length that matches it"
            ) from None
        raise IncompleteBody(
            "the request body's chunked encoding is malformed or ends early; send hexadecimal "
            "chunk sizes, each chunk followed by CRLF, and a last chunk of size 0"
        ) from None


def mimetype(environ: dict[str, Any]) -> str:
    """The request's media type, lower case, without parameters ("" when none is sent)."""
    return str(environ.get("CONTENT_TYPE", "")).split(";", 1)[0].strip().lower()


def require_json_type(environ: dict[str, Any]) -> None:
    """application/json or any ``+json`` type, else 415."""
    mimetype_ = mimetype(environ)
    if mimetype_ != "application/json" and not mimetype_.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {mimetype_ or 'none'!r}"
        )


def parse_json(raw: bytes) -> Any:
    """Strict JSON (no NaN or Infinity literals); a syntax error is a 400 that says where."""
    if not raw:
        raise BadRequest("request body is empty; send a JSON object", code="invalid_json")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None


def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """Content type checked, size limited, parsed, and required to be a JSON object."""
    return read_environ_json_object(request.environ, max_bytes)


def read_environ_json_object(environ: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """``read_json_object`` for a bare WSGI environ."""
    require_json_type(environ)
    doc = parse_json(read_environ_body(environ, max_bytes))
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return doc
