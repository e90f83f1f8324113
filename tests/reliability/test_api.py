"""Both services describe their HTTP API as OpenAPI 3, the document API fuzzing starts from.

The fuzzing itself (schemathesis against a live model service and router, with and without the
admin token: no server errors, no answer outside the document) lives in
``tests/api/test_openapi.py``; this scenario only checks that the documents are served.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.reliability.conftest import Gateway, Row
from tests.servers import ServerProcess


def describes_predict(doc: dict[str, Any]) -> bool:
    operation = doc.get("paths", {}).get("/predict", {}).get("post", {})
    return str(doc.get("openapi", "")).startswith("3.") and "200" in operation.get("responses", {})


@pytest.mark.scenario(12, "OpenAPI documents served by both services (fuzzed in tests/api)")
def test_both_services_serve_an_openapi_3_document(
    gateway: Gateway, v1_service: ServerProcess, scenario: Row
) -> None:
    """GET /openapi.json on the model service and on the router: OpenAPI 3, covering /predict."""
    answers = {name: requests.get(url + "/openapi.json", timeout=10)
               for name, url in (("model service", v1_service.url), ("router", gateway.url))}
    wrong = {name: resp.status_code for name, resp in answers.items()
             if resp.status_code != 200 or resp.headers["Content-Type"] != "application/json"
             or not describes_predict(resp.json())}
    scenario.record(len(answers), len(wrong),
                    ", ".join(f"{name}: OpenAPI {resp.json().get('openapi')}"
                              for name, resp in answers.items() if resp.status_code == 200))
    assert not wrong, wrong
