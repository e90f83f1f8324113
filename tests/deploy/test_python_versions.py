"""The supported Pythons are named alike everywhere, and make's venv never mixes two of them.

``pyproject.toml``'s requires-python is the source; ``bin/pythons`` (which make and CI use to find
interpreters), ruff's target, ``.python-version`` (Heroku's runtime) and the README agree with it.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.servers import ROOT

PYTHONS = ROOT / "bin" / "pythons"
VENV_PYTHON = ROOT / "bin" / "venv-python"


def requires_python() -> list[str]:
    """The minor versions ``>=3.A,<3.B`` admits, newest first."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", spec.replace(" ", ""))
    assert match, f"requires-python {spec!r} is not of the form >=3.A,<3.B"
    low, high = int(match[1]), int(match[2])
    return [f"3.{minor}" for minor in range(high - 1, low - 1, -1)]


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, env=env
    )


def base_python() -> str:
    return getattr(sys, "_base_executable", sys.executable)


def minor(python: str | Path) -> str:
    return run(python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])").stdout.strip()


def test_bin_pythons_looks_for_exactly_the_versions_pyproject_admits() -> None:
    line = re.search(r"^SUPPORTED=\((.*)\)$", PYTHONS.read_text(), re.M)
    assert line, "bin/pythons has no SUPPORTED=(...) line"
    assert line[1].split() == requires_python()


def test_ruff_targets_the_oldest_supported_python() -> None:
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["target-version"]
    assert target == "py" + requires_python()[-1].replace(".", "")


def test_heroku_runtime_and_readme_name_supported_versions() -> None:
    supported = requires_python()
    assert (ROOT / ".python-version").read_text().strip() in supported
    readme = (ROOT / "README.md").read_text()
    assert f"Python {', '.join(sorted(supported)[:-1])} or {sorted(supported)[-1]}" in readme


def test_bin_pythons_lists_working_interpreters_newest_first() -> None:
    listed = run(PYTHONS)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split(" ", 1) for line in listed.stdout.splitlines()]
    versions = [version for version, _ in rows]

    assert versions and set(versions) <= set(requires_python())
    assert versions == sorted(versions, key=lambda v: int(v.split(".")[1]), reverse=True)
    for version, path in rows:
        assert minor(path) == version, f"{path} is not Python {version}"
    assert run(PYTHONS, "--newest").stdout.strip() == rows[0][1]
    assert run(PYTHONS, "--oldest").stdout.strip() == rows[-1][1]


def test_bin_pythons_says_when_it_finds_none(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYENV_ROOT": str(tmp_path), "HOME": str(tmp_path)}
    if any(Path(d, f"python{v}").exists() for d in ("/usr/bin", "/bin") for v in requires_python()):
        pytest.skip("this system's own Python is a supported version")
    found = run("bash", PYTHONS, env=env)
    assert found.returncode == 1
    assert "no supported Python found" in found.stderr


def fake_python(path: Path, version: str) -> Path:
    """A stand-in interpreter that reports ``version`` and can do nothing else."""
    path.write_text(f"#!/bin/sh\necho '{version} {path}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize("python", ["/nonexistent/python3.12", "python2"])
def test_venv_python_refuses_a_python_that_does_not_run(tmp_path: Path, python: str) -> None:
    made = run(VENV_PYTHON, tmp_path / "venv", python)
    assert made.returncode == 1
    assert f"PYTHON={python} does not run" in made.stderr
    assert not (tmp_path / "venv").exists()


def test_venv_python_refuses_an_unsupported_version(tmp_path: Path) -> None:
    old = fake_python(tmp_path / "python3.10", "3.10")
    made = run(VENV_PYTHON, tmp_path / "venv", old)
    assert made.returncode == 1
    assert "Python 3.10 is not supported" in made.stderr
    assert not (tmp_path / "venv").exists()


def test_venv_python_makes_a_venv_then_keeps_it(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    version = minor(base_python())

    made = run(VENV_PYTHON, venv, base_python())
    assert made.returncode == 0, made.stderr
    assert f"making {venv} with Python {version}" in made.stdout
    record = (venv / ".python").read_text().split()
    assert record[0] == version and minor(venv / "bin" / "python") == version
    assert (venv / "bin" / "pip").exists()

    before = (venv / ".python").stat().st_mtime_ns
    kept = run(VENV_PYTHON, venv)
    assert kept.returncode == 0, kept.stderr
    assert "making" not in kept.stdout
    assert (venv / ".python").stat().st_mtime_ns == before, "an unchanged venv must not look new"


@pytest.mark.slow
def test_venv_python_makes_the_venv_again_for_another_minor_version(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    installed = dict(line.split(" ", 1) for line in run(PYTHONS).stdout.splitlines())
    here = minor(base_python())
    other = next((v for v in installed if v != here), None)
    if other is None:
        pytest.skip(f"only Python {here} is installed; another minor version is needed")

    assert run(VENV_PYTHON, venv, base_python()).returncode == 0
    (venv / "marker").write_text("from the first venv")
    again = run(VENV_PYTHON, venv, f"python{other}", env={**os.environ})

    assert again.returncode == 0, again.stderr
    assert f"{venv} runs Python {here}, not {other}: making it again" in again.stdout
    assert minor(venv / "bin" / "python") == other
    assert (venv / ".python").read_text().split()[0] == other
    assert not (venv / "marker").exists()
