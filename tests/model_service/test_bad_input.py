"""Every kind of bad request gets the right 4xx JSON error from a real service, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.model_service.conftest import error_of, post, rows_of
from tests.servers import ServerProcess, model_service

ROW = "[" + ",".join(["1.5"] * 30) + "]"
MAX_ROWS = 50
MAX_BODY = 64 * 1024


def _row_with(cell: str, at: int = 3) -> str:
    cells = ["1.5"] * 30
    cells[at] = cell
    return "[" + ",".join(cells) + "]"


def _instances(*rows: str) -> bytes:
    return ('{"instances": [' + ",".join(rows) + "]}").encode()


BAD_BODIES = [
    # (case, raw body, status, error code, words the message must contain)
    ("not JSON", b"predict this", 400, "invalid_json", "not valid JSON"),
    ("empty body", b"", 400, "invalid_json", "empty"),
    ("truncated JSON", b'{"instances": [[1.5, 2', 400, "invalid_json", "not valid JSON"),
    ("JSON array, not object", ("[" + ROW + "]").encode(), 400, "invalid_json", "JSON object"),
    ("missing instances", b'{"rows": [[1.5]]}', 422, "missing_field", '"instances"'),
    (
        "extra field",
        b'{"instances": [' + ROW.encode() + b'], "x": 1}',
        422,
        "invalid_input",
        "unknown field",
    ),
    ("instances not a list", b'{"instances": "all of them"}', 422, "invalid_input", "list of rows"),
    ("empty list", b'{"instances": []}', 422, "invalid_input", "empty"),
    (
        "29 features",
        _instances("[" + ",".join(["1.5"] * 29) + "]"),
        422,
        "invalid_input",
        "30 features",
    ),
    (
        "31 features",
        _instances("[" + ",".join(["1.5"] * 31) + "]"),
        422,
        "invalid_input",
        "30 features",
    ),
    ("ragged rows", _instances(ROW, "[1.5, 2.5]"), 422, "invalid_input", "instances[1]"),
    ("row is a number", _instances(ROW, "7"), 422, "invalid_input", "instances[1]"),
    (
        "string cell",
        _instances(_row_with('"12.5"')),
        422,
        "invalid_input",
        "instances[0][3]: column 'mean area' must be a number, got a string",
    ),
    ("null cell", _instances(_row_with("null")), 422, "invalid_input", "got null"),
    (
        "booleans-only row",
        _instances("[" + ",".join(["true"] * 30) + "]"),
        422,
        "invalid_input",
        "got a boolean",
    ),
    (
        "boolean among numbers",
        _instances(ROW, _row_with("true", at=5)),
        422,
        "invalid_input",
        "instances[1][5]: column 'mean compactness' must be a number, got a boolean",
    ),
    (
        "false among integers",
        _instances("[" + ",".join(["1"] * 29) + ",false]"),
        422,
        "invalid_input",
        "instances[0][29]",
    ),
    ("nested array cell", _instances(_row_with("[1.5]")), 422, "invalid_input", "got an array"),
    ("object cell", _instances(_row_with('{"v": 1.5}')), 422, "invalid_input", "got an object"),
    ("NaN literal", _instances(_row_with("NaN")), 400, "invalid_json", "not valid JSON"),
    ("Infinity literal", _instances(_row_with("Infinity")), 400, "invalid_json", "not valid JSON"),
    (
        "-Infinity literal",
        _instances(_row_with("-Infinity")),
        400,
        "invalid_json",
        "not valid JSON",
    ),
    (
        "1e400 overflows to infinity",
        _instances(_row_with("1e400")),
        400,
        "invalid_json",
        "infinity",
    ),
    (
        "5000-deep nesting",
        b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        400,
        "invalid_json",
        "depth",
    ),
    (
        "mixed records and arrays",
        _instances(ROW, '{"mean radius": 1}'),
        422,
        "invalid_input",
        "instances[1]",
    ),
]


@pytest.mark.parametrize(
    "case, body, status, code, words", BAD_BODIES, ids=[case[0] for case in BAD_BODIES]
)
def test_bad_body_gets_a_json_4xx(
    v1_service: ServerProcess, case: str, body: bytes, status: int, code: str, words: str
) -> None:
    resp = post(v1_service.url + "/predict", data=body)
    assert resp.status_code == status, resp.text
    error = error_of(resp)
    assert error["code"] == code
    assert words in error["message"]


def _record(features: list[str], row: list[float]) -> dict[str, Any]:
    return dict(zip(features, row, strict=True))


@pytest.mark.parametrize(
    "case, change, words",
    [
        (
            "unknown feature",
            lambda r: {**r, "mean colour": 1.0},
            "unknown feature(s) ['mean colour']",
        ),
        (
            "missing feature",
            lambda r: {k: v for k, v in r.items() if k != "worst symmetry"},
            "missing feature(s) ['worst symmetry']",
        ),
        (
            "renamed feature",
            lambda r: {("radius" if k == "mean radius" else k): v for k, v in r.items()},
            "unknown feature(s) ['radius']",
        ),
        ("string value", lambda r: {**r, "mean radius": "big"}, "must be a number, got a string"),
        ("null value", lambda r: {**r, "mean area": None}, "got null"),
        ("boolean value", lambda r: {**r, "mean area": True}, "got a boolean"),
    ],
)
def test_bad_record_names_the_problem(
    v1_service: ServerProcess, dataset: Any, features: list[str], case: str, change: Any, words: str
) -> None:
    good = _record(features, dataset.data[0].tolist())
    resp = post(v1_service.url + "/predict", {"instances": [good, change(good)]})
    assert resp.status_code == 422, resp.text
    error = error_of(resp)
    assert error["code"] == "invalid_input"
    assert words in error["message"] and "instances[1]" in error["message"]


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "text/json"]
)
def test_wrong_content_type_is_415(v1_service: ServerProcess, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    resp = requests.post(
        v1_service.url + "/predict", data=_instances(ROW), headers=headers, timeout=10
    )
    assert resp.status_code == 415
    error = error_of(resp)
    assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("GET", "/nowhere", None),
        ("POST", "/predict/", None),
        ("GET", "/predict", "POST"),
        ("PUT", "/predict", "POST"),
        ("DELETE", "/version", "GET"),
        ("POST", "/health", "GET"),
        ("GET", "/admin/reload", "POST"),
    ],
)
def test_unknown_route_and_wrong_method_are_json(
    v1_service: ServerProcess, method: str, path: str, allowed: str | None
) -> None:
    resp = requests.request(method, v1_service.url + path, timeout=10)
    if allowed is None:
        assert resp.status_code == 404
        assert error_of(resp)["code"] == "not_found"
    else:
        assert resp.status_code == 405
        assert error_of(resp)["code"] == "method_not_allowed"
        methods = {m.strip() for m in resp.headers["Allow"].split(",")}
        assert allowed in methods and method not in methods


@pytest.fixture(scope="module")
def limited_service(artifacts: Path, log_dir: Path) -> Iterator[ServerProcess]:
    with model_service(
        "v1",
        artifacts,
        log_dir,
        WEB_CONCURRENCY="1",
        MODEL_MAX_ROWS=str(MAX_ROWS),
        MODEL_MAX_BODY_BYTES=str(MAX_BODY),
    ) as server:
        yield server.wait_ready(timeout=90)


def test_rows_up_to_the_limit_are_answered(limited_service: ServerProcess, dataset: Any) -> None:
    resp = post(
        limited_service.url + "/predict", {"instances": rows_of(dataset, MAX_ROWS).tolist()}
    )
    assert resp.status_code == 200 and len(resp.json()["predictions"]) == MAX_ROWS


def test_more_rows_than_the_limit_is_413(limited_service: ServerProcess, dataset: Any) -> None:
    resp = post(
        limited_service.url + "/predict", {"instances": rows_of(dataset, MAX_ROWS + 1).tolist()}
    )
    assert resp.status_code == 413
    error = error_of(resp)
    assert error["code"] == "too_many_rows" and str(MAX_ROWS) in error["message"]


def _oversized() -> bytes:
    body = _instances(*[ROW] * 3000)
    assert len(body) > 2 * MAX_BODY
    return body


def test_body_over_the_limit_with_content_length_is_413(limited_service: ServerProcess) -> None:
    resp = post(limited_service.url + "/predict", data=_oversized())
    assert resp.status_code == 413
    error = error_of(resp)
    assert error["code"] == "payload_too_large" and str(MAX_BODY) in error["message"]


def _pieces(body: bytes, size: int = 8192) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_chunked_body_over_the_limit_is_413(limited_service: ServerProcess) -> None:
    resp = requests.post(
        limited_service.url + "/predict",
        data=_pieces(_oversized()),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert resp.request.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in resp.request.headers
    assert resp.status_code == 413
    assert error_of(resp)["code"] == "payload_too_large"


def test_chunked_body_under_the_limit_is_answered(
    limited_service: ServerProcess, dataset: Any
) -> None:
    body = json.dumps({"instances": rows_of(dataset, 20).tolist()}).encode()
    resp = requests.post(
        limited_service.url + "/predict",
        data=_pieces(body, 1000),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert resp.status_code == 200 and len(resp.json()["predictions"]) == 20


def test_service_still_answers_after_refusals(limited_service: ServerProcess, dataset: Any) -> None:
    for _ in range(3):
        assert post(limited_service.url + "/predict", data=_oversized()).status_code == 413
    resp = post(limited_service.url + "/predict", {"instances": rows_of(dataset, 2).tolist()})
    assert resp.status_code == 200
