"""A Heroku slug built as the Python buildpack builds it, for tests that start the Procfile.

The buildpack installs ``requirements.txt`` alone into a fresh environment (never the dev
requirements, never the project itself), copies the app's files, runs ``bin/post_compile`` and
starts the Procfile's command from the app root with ``PORT`` and the app's config vars. The
environment is cached by the hash of ``requirements.txt`` (and the Python it was built with), so
only a change of the pins pays for a new install.

    >>> venv = slug_venv()                     # doctest: +SKIP
    >>> app = copy_app(tmp_path / "app")       # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.servers import ROOT

CACHE = Path(os.environ.get("SLUG_VENV_CACHE")
             or Path.home() / ".cache" / "model-rollout-router" / "slug-venvs")
COMPLETE = ".complete"
# What a dyno has that is not a config var of the app: the platform's own variables.
PLATFORM = ("PATH", "HOME", "LANG", "PORT")
NOT_SHIPPED = (".git", ".venv", "artifacts", "var", "build")


def requirements_key() -> str:
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes())
    digest.update(f"{sys.version}|{platform.machine()}".encode())
    return digest.hexdigest()[:16]


def slug_venv() -> Path:
    """A virtual environment holding ``requirements.txt`` and nothing else (built once per pin set)."""
    target = CACHE / requirements_key()
    if (target / COMPLETE).is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once build it once
        if (target / COMPLETE).is_file():
            return target
        shutil.rmtree(target, ignore_errors=True)  # an interrupted build
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(target)], check=True, timeout=300)
        install = subprocess.run(
            [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", "-r", str(ROOT / "requirements.txt")],
            capture_output=True, text=True, timeout=1800, check=False)
        if install.returncode != 0:
            raise RuntimeError(f"pip install -r requirements.txt failed:\n{install.stderr[-4000:]}")
        (target / COMPLETE).write_text("")
    return target


def shipped_files() -> list[str]:
    """The files a ``git push`` would ship: tracked ones, plus new files git does not ignore."""
    if (ROOT / ".git").exists():
        listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                  "--exclude-standard"], cwd=ROOT, capture_output=True,
                                 check=True).stdout.decode()
        return [name for name in listing.split("\0") if name and (ROOT / name).is_file()]
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
            if p.is_file() and p.relative_to(ROOT).parts[0] not in NOT_SHIPPED
            and "__pycache__" not in p.parts]


def copy_app(dest: Path) -> Path:
    """The app's files, as the buildpack finds them in the build folder (no artifacts, no venv)."""
    for name in shipped_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


def app_json_env() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((ROOT / "app.json").read_text())
    return dict(doc["env"])


def dyno_env(venv: Path, home: Path, **config: str) -> dict[str, str]:
    """The environment of a dyno: the platform's variables and the given config vars, no more.

    Every config var must be one ``app.json`` documents; those with a ``value`` there get it, as a
    deploy from the manifest does.
    """
    documented = app_json_env()
    unknown = sorted(set(config) - set(documented) - set(PLATFORM))
    if unknown:
        raise AssertionError(f"{unknown} are not documented in app.json")
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
           "HOME": str(home), "LANG": "C.UTF-8"}
    env.update({name: entry["value"] for name, entry in documented.items() if "value" in entry})
    env.update(config)
    return env
