"""environment.yaml (conda) describes exactly the pinned packages of the requirements files."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.servers import ROOT

CONDA_TOOLING = {"python", "pip"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file, following ``-r`` includes."""
    found: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            found.update(pins(path.parent / line.split(None, 1)[1]))
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {raw!r} is not pinned as name==version"
        found[normalise(name.split("[", 1)[0])] = version.strip()
    return found


def conda_packages(path: Path) -> dict[str, str]:
    doc = yaml.safe_load(path.read_text())
    found: dict[str, str] = {}
    for dep in doc["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                name, sep, version = line.partition("==")
                assert sep, f"environment.yaml pip entry {line!r} is not pinned"
                found[normalise(name)] = version.strip()
        else:
            name, _, version = dep.partition("=")
            if normalise(name) not in CONDA_TOOLING:
                found[normalise(name)] = version.lstrip("=").strip()
    return found


def test_environment_yaml_matches_the_requirements_files() -> None:
    wanted = pins(ROOT / "requirements.txt") | pins(ROOT / "requirements-dev.txt")
    described = conda_packages(ROOT / "environment.yaml")

    missing = {n: v for n, v in wanted.items() if described.get(n) != v}
    extra = {n: v for n, v in described.items() if n not in wanted}
    assert not missing and not extra, f"environment.yaml lacks {missing}, has extra {extra}"


def test_environment_yaml_pins_the_python_of_the_runtime() -> None:
    doc = yaml.safe_load((ROOT / "environment.yaml").read_text())
    python = next(d for d in doc["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python == f"python={(ROOT / '.python-version').read_text().strip()}"


def test_requirement_pins_are_read() -> None:
    assert pins(ROOT / "requirements.txt")["scikit-learn"]
    assert "pytest" in pins(ROOT / "requirements-dev.txt")
