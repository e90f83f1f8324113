"""Prometheus and Grafana assets: valid for promtool, and every query names a real metric.

The metric check starts a real router and model services, sends traffic that makes every series
exist (predictions, shadow comparisons, an upstream failure, rollout analyses), scrapes their
/metrics and compares the series names the queries use with the names really exported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import ROOT, ServerProcess, free_port, router, wait_until

DEPLOY = ROOT / "deploy"
PROMETHEUS_OWN = {"up"}  # written by Prometheus itself for every scrape target
TOKEN = "admin-secret"
ROW = [13.54, 14.36, 87.46, 566.3, 0.09779, 0.08129, 0.06664, 0.04781, 0.1885, 0.05766, 0.2699,
       0.7886, 2.058, 23.56, 0.008462, 0.0146, 0.02387, 0.01315, 0.0198, 0.0023, 15.11, 19.26,
       99.7, 711.2, 0.144, 0.1773, 0.239, 0.1288, 0.2977, 0.07259]
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression (or a Grafana ``label_values()`` query) selects."""
    expr = re.sub(r"\blabel_values\(\s*([^,()]+?)\s*(?:,[^()]*)?\)", r" \1 ", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'", " ", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", " ", expr)  # Grafana variables
    found = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {name for name in found if name.lower() not in _KEYWORDS}


@pytest.mark.parametrize("expr, names", [
    ('sum by (version) (rate(router_requests_total{version=~"$version"}[$__rate_interval]))',
     {"router_requests_total"}),
    ("histogram_quantile(0.99, sum by (version, le) (rate(x_seconds_bucket[5m])))",
     {"x_seconds_bucket"}),
    ("a - on () group_left min(b and on (version) (c > 0 < 100)) > 0.02", {"a", "b", "c"}),
    ("sum(rate(x_total[1m])) by (le) / ignoring(code) y_count offset 5m", {"x_total", "y_count"}),
    ("label_values(router_requests_total, version)", {"router_requests_total"}),
    ('up{job="router"} == 0', {"up"}),
    ("version:router_error_ratio:rate5m > 1.5e3", {"version:router_error_ratio:rate5m"}),
])
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# -- the assets ------------------------------------------------------------------------------------


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
    return groups


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return doc


def dashboard_queries() -> dict[str, str]:
    queries = {f"panel {panel['title']!r} {target['refId']}": target["expr"]
               for panel in dashboard()["panels"] for target in panel.get("targets", [])}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            queries[f"variable {variable['name']}"] = text
    return queries


def rule_queries() -> dict[str, str]:
    return {f"rule {rule.get('alert') or rule.get('record')}": rule["expr"]
            for group in rule_groups() for rule in group["rules"]}


def recorded_names() -> set[str]:
    return {rule["record"] for group in rule_groups() for rule in group["rules"]
            if "record" in rule}


def promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("promtool is missing: install Debian's prometheus package")
    pytest.skip("promtool is not installed (Debian package 'prometheus'); with CI=true this fails")


@pytest.mark.parametrize("argv", [
    ["check", "config", "deploy/prometheus.yml"],
    ["check", "rules", "deploy/alerts.yml"],
    ["test", "rules", "tests/deploy/alerts_test.yml"],
], ids=["config", "rules", "rule-unit-tests"])
def test_promtool_accepts_the_assets(argv: list[str]) -> None:
    proc = subprocess.run([promtool(), *argv], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_the_router_and_both_model_services() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
               for job in config["scrape_configs"]}

    assert targets == {"router": ["localhost:8000"],
                       "model-services": ["localhost:8001", "localhost:8002"]}
    assert config["rule_files"] == ["alerts.yml"]


def test_dashboard_is_templated_on_a_prometheus_datasource() -> None:
    doc = dashboard()
    variables = {v["name"]: v for v in doc["templating"]["list"]}

    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == \
        ("datasource", "prometheus")
    assert 36 <= doc["schemaVersion"] <= 41
    assert {"Request rate", "Error rate", "Latency p50 / p95 / p99", "Traffic weight",
            "Config version", "Shadow agreement",
            "Rollout decisions"} <= {p["title"] for p in doc["panels"]}
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, \
                panel["title"]
            assert panel["targets"], panel["title"]
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])


def test_latency_panel_shows_three_percentiles_per_version() -> None:
    panel = next(p for p in dashboard()["panels"] if p["title"].startswith("Latency"))

    quantiles = sorted(float(re.findall(r"histogram_quantile\(([\d.]+)", t["expr"])[0])
                       for t in panel["targets"])
    assert quantiles == [0.5, 0.95, 0.99]
    assert all("by (version, le)" in t["expr"] for t in panel["targets"])


# -- against the real services ---------------------------------------------------------------------


def scrape(url: str) -> set[str]:
    text = requests.get(url + "/metrics", timeout=10).text
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def exported(v1_service: ServerProcess, v2_service: ServerProcess, log_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Series names the router and both model services export after varied traffic."""
    refusing = f"http://127.0.0.1:{free_port()}"
    upstreams = {"v1": v1_service.url, "v2": v2_service.url, "v3": refusing}
    state = tmp_path_factory.mktemp("assets") / "state.db"
    with router(upstreams, log_dir, str(state), token=TOKEN, ROUTER_CANDIDATE="v2") as server:
        server.wait_ready()
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"

        def predict(**headers: str) -> int:
            return session.post(server.url + "/predict", json={"instances": [ROW]}, headers=headers,
                                timeout=10).status_code

        assert predict() == 200
        assert predict(**{"X-Route-To": "v3"}) == 502  # v3 refuses: an upstream error
        session.patch(server.url + "/admin/state", timeout=10,
                      json={"strategy": "shadow", "shadow_percent": 100}).raise_for_status()
        assert [predict() for _ in range(10)] == [200] * 10
        session.post(server.url + "/admin/rollout", timeout=10, json={
            "strategy": "canary", "steps": [10, 100], "interval_s": 0.2, "min_requests": 100_000,
        }).raise_for_status()  # analyses that wait for samples: decisions are counted

        def router_names() -> set[str] | None:
            names = scrape(server.url)
            late = {"router_shadow_comparisons_total", "router_rollout_decisions_total"}
            return names if late <= names else None

        yield wait_until(router_names, timeout=30, interval=0.2) | scrape(v1_service.url) \
            | scrape(v2_service.url)


def test_exported_names_include_histogram_series(exported: set[str]) -> None:
    assert {"router_request_duration_seconds_bucket", "router_request_duration_seconds_count",
            "model_inference_duration_seconds_bucket", "router_requests_total",
            "model_info"} <= exported
    assert "router_request_duration_seconds" not in exported  # a histogram is only its series


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_query_names_an_exported_metric(exported: set[str], source: str) -> None:
    queries = dashboard_queries() if source == "dashboard" else rule_queries()
    known = exported | PROMETHEUS_OWN | recorded_names()

    used = {name for expr in queries.values() for name in metric_names(expr)}
    unknown = {where: sorted(metric_names(expr) - known) for where, expr in queries.items()
               if metric_names(expr) - known}

    assert len(used) >= 5
    assert unknown == {}


def heroku_jobs() -> list[dict[str, Any]]:
    """The commented Heroku scrape jobs at the end of prometheus.yml, uncommented."""
    text = (DEPLOY / "prometheus.yml").read_text()
    block = text.split("# Heroku: one app per role", 1)[1].split("\n", 1)[1]
    lines = [line.replace("  # ", "  ", 1) for line in block.splitlines() if line.strip()]
    jobs: list[dict[str, Any]] = yaml.safe_load("\n".join(lines))
    return jobs


def test_heroku_jobs_send_the_metrics_token() -> None:
    jobs = heroku_jobs()
    assert [job["job_name"] for job in jobs] == ["router", "model-services"]
    for job in jobs:
        assert job["scheme"] == "https"
        assert job["authorization"] == {"type": "Bearer", "credentials_file": "metrics-token"}
    assert "unauthenticated" not in (DEPLOY / "prometheus.yml").read_text()


def test_promtool_accepts_the_heroku_jobs(tmp_path: Path) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["scrape_configs"] = heroku_jobs()
    config.pop("rule_files")
    (tmp_path / "metrics-token").write_text("metrics-secret\n")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([promtool(), "check", "config", "prometheus.yml"], check=False,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
