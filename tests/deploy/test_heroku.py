"""Heroku's app manifest and Python runtime: every setting described, the runtime pinned."""

from __future__ import annotations

import json
import os
import re
import tomllib
from typing import Any

from tests.servers import ROOT

PLATFORM_SET = {"PORT", "DYNO"}  # Heroku sets them for every dyno; an app cannot choose them
# set by the server for its own workers
INTERNAL = {"SERVICE_RUNTIME_DIR", "SERVICE_RUNTIME_OWNED", "SERVICE_RUN_ID"}
_READ = re.compile(
    r"(?:env_(?:str|int|float|bool|token)\(\s*env,\s*|os\.environ(?:\.get\(|\.setdefault\(|\[)\s*"
    r'|os\.getenv\(\s*)"([A-Z][A-Z0-9_]+)"'
)


def manifest() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((ROOT / "app.json").read_text())
    return doc


def documented_variables() -> set[str]:
    """The variables of the README's configuration table (the product contract's, and more)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def code_variables() -> set[str]:
    """Every environment variable the services read."""
    names: set[str] = set()
    for package in ("common", "serving", "model_service", "router", "metrics"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name != "cli.py":  # the operator's CLI runs on a laptop, not on a dyno
                names.update(_READ.findall(path.read_text()))
    return names


def test_app_json_describes_every_variable() -> None:
    env = manifest()["env"]
    wanted = (documented_variables() | code_variables() | {"APP_ROLE"}) - PLATFORM_SET - INTERNAL

    assert {"ROUTER_UPSTREAMS", "MODEL_VERSION", "FAULT_ERROR_RATE", "WEB_CONCURRENCY"} <= wanted
    assert sorted(wanted - set(env)) == []
    for name, entry in env.items():
        assert entry.get("description"), f"{name} has no description"
        assert isinstance(entry.get("value", ""), str), f"{name}: values must be strings"


def test_app_json_uses_the_python_buildpack_and_generates_secrets() -> None:
    doc = manifest()
    assert doc["buildpacks"] == [{"url": "heroku/python"}]
    assert doc["env"]["APP_ROLE"]["required"] is True
    for token in ("ROUTER_ADMIN_TOKEN", "MODEL_ADMIN_TOKEN", "MODEL_ACCESS_TOKEN", "METRICS_TOKEN"):
        assert doc["env"][token].get("generator") == "secret"
        assert "value" not in doc["env"][token]


def test_python_version_file_pins_the_projects_python() -> None:
    pinned = (ROOT / ".python-version").read_text().strip()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]

    assert re.fullmatch(r"3\.\d+", pinned)
    assert f">={pinned}" in requires
    assert not (ROOT / "runtime.txt").exists(), "runtime.txt is deprecated and would win"


def test_post_compile_is_an_executable_bash_script() -> None:
    hook = ROOT / "bin" / "post_compile"
    assert os.access(hook, os.X_OK)
    assert hook.read_text().startswith("#!/usr/bin/env bash\n")
    assert "python -m model_service train" in hook.read_text()
