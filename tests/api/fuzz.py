"""Running schemathesis against a live service, and reading what it found.

The CLI runs as a subprocess (``python -m schemathesis.cli run``) with a JSON report, so a run is
exactly what an operator would type, and its console output lands in the failure message.
Generation is deterministic: the same document gives the same requests on every run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "ignored_auth",
)
MAX_EXAMPLES = 30
HANG_GUARD_S = 900  # a safety net for a hung run, not a speed expectation


@dataclass(frozen=True)
class FuzzRun:
    """One schemathesis run: its JSON report and its console output."""

    report: dict[str, Any]
    output: str

    def answers(self, operation: str, outcome: str) -> int:
        """How many requests to ``operation`` ("GET /admin/state") ended in ``outcome``.

        Outcomes are schemathesis' own: "accepted" (2xx), "rejected" (4xx), "conflicts", ...
        """
        phases = self.report.get("valid_rates", {}).get(operation, {})
        return sum(int(rates.get(outcome, 0)) for rates in phases.values())

    def explain(self) -> str:
        return f"schemathesis found problems:\n{self.output[-20000:]}"


def fuzz(base_url: str, workdir: Path, *, token: str | None = None,
         include_path_regex: str | None = None, max_examples: int = MAX_EXAMPLES) -> FuzzRun:
    """Fuzz every operation ``base_url/openapi.json`` describes; ``token`` is sent as bearer."""
    workdir.mkdir(parents=True, exist_ok=True)
    report_path = workdir / "schemathesis.json"
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(max_examples),
        "--generation-deterministic",
        "--suppress-health-check", "all",
        "--workers", "1",
        "--request-timeout", "20",
        "--no-color",
        "--report", "json", "--report-json-path", str(report_path),
    ]
    if token is not None:
        argv += ["--header", f"Authorization: Bearer {token}"]
    if include_path_regex is not None:
        argv += ["--include-path-regex", include_path_regex]
    done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=HANG_GUARD_S,
                          check=False)
    output = done.stdout + done.stderr
    assert report_path.exists(), f"schemathesis wrote no report (exit {done.returncode}):\n{output}"
    report = json.loads(report_path.read_text())
    report.setdefault("exit_code", done.returncode)
    return FuzzRun(report, output)


def openapi_document(base_url: str) -> dict[str, Any]:
    resp = requests.get(f"{base_url}/openapi.json", timeout=10)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["Content-Type"].startswith("application/json")
    return dict(resp.json())
