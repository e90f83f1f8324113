"""requirements.txt holds everything the services import at run time, pinned.

Heroku's Python buildpack installs ``requirements.txt`` and nothing else, while every test
environment installs the dev requirements on top of it: a package that only the dev file pins is
there in every test and missing in production. These checks read what the product's code imports
and what the pinned distributions declare, so such a gap fails here, by name, rather than at a
dyno's boot. (``tests/deploy/test_procfile.py`` then starts the services from ``requirements.txt``
alone, which also catches an import that a pinned library makes without declaring it.)
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.test_environment import pins
from tests.servers import ROOT

# What runs on a dyno. tests/ and loadtest/ may import the dev requirements too.
PRODUCT_PACKAGES = ("common", "model_service", "router", "strategies", "metrics", "serving")


def runtime_pins() -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in pins(ROOT / "requirements.txt").items()}


def imported_modules(path: Path) -> Iterator[tuple[str, int]]:
    """Top-level names of the absolute imports in one file, with their line numbers."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".", 1)[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".", 1)[0], node.lineno


def product_files() -> list[Path]:
    return [path for package in PRODUCT_PACKAGES if (ROOT / package).is_dir()
            for path in sorted((ROOT / package).rglob("*.py"))]


def missing_distributions(files: list[Path], pinned: set[str]) -> list[str]:
    """``file:line imports X`` for every import that no pinned distribution provides."""
    providers = metadata.packages_distributions()
    ours = {path.name for path in ROOT.iterdir() if (path / "__init__.py").is_file()}
    problems = []
    for path in files:
        for module, line in imported_modules(path):
            if module in sys.stdlib_module_names or module in ours or module == "__future__":
                continue
            dists = {canonicalize_name(d) for d in providers.get(module, [])}
            if not dists & pinned:
                shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
                where = f"{shown}:{line}"
                found = ", ".join(sorted(dists)) or "no installed distribution"
                problems.append(f"{where} imports {module!r} ({found}), not in requirements.txt")
    return problems


def test_the_product_imports_only_what_requirements_txt_pins() -> None:
    files = product_files()
    assert len(files) > 40, "the product's modules were not found"

    assert missing_distributions(files, set(runtime_pins())) == []


def test_the_import_check_names_a_dev_only_import(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text("import locust\nimport yaml\nfrom json import dumps\nfrom router import app\n")

    assert missing_distributions([module], set(runtime_pins())) == [
        "probe.py:1 imports 'locust' (locust), not in requirements.txt"]


def declared_requirements(name: str) -> Iterator[Requirement]:
    """What one installed distribution requires on this platform, extras left out."""
    for line in metadata.requires(name) or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            yield requirement


@pytest.mark.parametrize("name", sorted(runtime_pins()))
def test_every_runtime_pin_is_installed_and_brings_only_pinned_requirements(name: str) -> None:
    """The pins are a closed set: pip on Heroku resolves nothing that the file does not name."""
    pinned = runtime_pins()

    assert metadata.version(name) == pinned[name], "the test environment differs from the pin"
    unpinned = [str(r) for r in declared_requirements(name)
                if canonicalize_name(r.name) not in pinned]
    assert unpinned == [], f"{name} needs {unpinned}: pin them in requirements.txt"
    for requirement in declared_requirements(name):
        version = pinned[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name} needs {requirement}, requirements.txt pins {version}")
