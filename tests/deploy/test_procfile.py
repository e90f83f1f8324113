"""The Procfile's ``web`` process started as Heroku starts it, once per role, from a real slug.

Heroku's Python buildpack installs ``requirements.txt`` alone (``tests.deploy.slug``), runs
``bin/post_compile``, sets ``PORT`` and the app's config vars, runs the Procfile command through
the shell from the app root, and at shutdown sends SIGTERM to every process of the dyno, then
SIGKILL 30 s later. Nothing here comes from the test environment: a package that only the dev
requirements install, or a variable that ``app.json`` does not document, makes these tests fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.deploy.slug import copy_app, dyno_env, slug_venv
from tests.servers import ROOT, free_port, wait_until

pytestmark = pytest.mark.slow

ROW = [17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871, 1.095,
       0.9053, 8.589, 153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193, 25.38, 17.33,
       184.6, 2019.0, 0.1622, 0.6656, 0.7119, 0.2654, 0.4601, 0.1189]
PRODUCT_PACKAGES = ("common", "serving", "model_service", "router", "strategies", "metrics")


def procfile() -> dict[str, str]:
    """Process types of the Procfile: name -> command."""
    types = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            types[name.strip()] = command.strip()
    return types


@dataclass(frozen=True)
class Slug:
    """A built slug: the app folder after ``bin/post_compile`` and its environment."""

    app: Path
    venv: Path
    home: Path

    def env(self, **config: str) -> dict[str, str]:
        return dyno_env(self.venv, self.home, **config)


class Dyno:
    """The ``web`` command under ``bash -c`` in a process group of its own, like a dyno."""

    def __init__(self, slug: Slug, log: Path, **config: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        env = slug.env(**config, PORT=str(self.port), WEB_CONCURRENCY="2")
        self._log = open(log, "wb")  # noqa: SIM115 (open for the process's whole life)
        self.proc = subprocess.Popen(["bash", "-c", procfile()["web"]], cwd=slug.app, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> Dyno:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"web process exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return requests.get(self.url + "/ready", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout=90, interval=0.2)
        return self

    def sigterm(self, timeout: float = 60) -> int:
        """SIGTERM to every process of the dyno, as Heroku does at shutdown; the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self._log.close()


@pytest.fixture(scope="module")
def slug(tmp_path_factory: pytest.TempPathFactory) -> Slug:
    """requirements.txt installed alone, the app's files copied, ``bin/post_compile`` run."""
    venv = slug_venv()
    root = tmp_path_factory.mktemp("slug")
    built = Slug(app=copy_app(root / "app"), venv=venv, home=root)
    proc = subprocess.run(["bash", "bin/post_compile"], check=False, cwd=built.app,
                          env=built.env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return built


@pytest.fixture(scope="module")
def model_dynos(slug: Slug, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Dyno]]:
    """One model app per version, each with only the config vars app.json documents."""
    logs = tmp_path_factory.mktemp("dyno")
    dynos = {version: Dyno(slug, logs / f"model-{version}.log", APP_ROLE="model",
                           MODEL_VERSION=version, MODEL_ADMIN_TOKEN="model-secret")
             for version in ("v1", "v2")}
    try:
        yield {version: dyno.wait_ready() for version, dyno in dynos.items()}
    finally:
        for dyno in dynos.values():
            dyno.sigterm()


def test_procfile_declares_one_web_process() -> None:
    assert list(procfile()) == ["web"]


def test_post_compile_trains_every_version(slug: Slug) -> None:
    for version in ("v1", "v2"):
        assert (slug.app / "artifacts" / version / "metadata.json").is_file()
        assert (slug.app / "artifacts" / version / "model.skops").is_file()


def test_every_product_module_imports_in_the_slug(slug: Slug) -> None:
    """Imports at module level of every product module, in the slug's environment."""
    script = (
        "import importlib, pkgutil, sys\n"
        f"for pkg in {PRODUCT_PACKAGES!r}:\n"
        "    root = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(root.__path__, pkg + '.'):\n"
        "        if info.name.rsplit('.', 1)[-1] not in ('wsgi', '__main__'):\n"
        "            importlib.import_module(info.name)\n"
        "import gunicorn.workers.ggevent\n"  # the worker class the server configuration picks
    )
    proc = subprocess.run(["python", "-c", script], cwd=slug.app, env=slug.env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_model_role_serves_on_port(model_dynos: dict[str, Dyno]) -> None:
    dyno = model_dynos["v1"]
    resp = requests.post(dyno.url + "/predict", json={"instances": [ROW]}, timeout=10)

    assert resp.status_code == 200
    assert resp.json()["model_version"] == "v1"
    assert f"0.0.0.0:{dyno.port}" in dyno.log()  # every interface, as Heroku needs


def test_router_role_routes_predictions_to_both_model_apps_and_stops_cleanly(
        slug: Slug, model_dynos: dict[str, Dyno], tmp_path: Path) -> None:
    upstreams = ",".join(f"{version}={dyno.url}" for version, dyno in model_dynos.items())
    dyno = Dyno(slug, tmp_path / "router.log", APP_ROLE="router", ROUTER_UPSTREAMS=upstreams,
                ROUTER_ADMIN_TOKEN="admin-secret", ROUTER_MODEL_ADMIN_TOKEN="model-secret")
    try:
        dyno.wait_ready()
        resp = requests.post(dyno.url + "/predict", json={"instances": [ROW]}, timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.headers["X-Model-Version"] == "v1"
        assert len(resp.json()["predictions"]) == 1
        preview = requests.post(dyno.url + "/predict", json={"instances": [ROW]},
                                headers={"X-Route-To": "v2"}, timeout=10)
        assert (preview.status_code, preview.headers["X-Model-Version"]) == (200, "v2")
        state = requests.get(dyno.url + "/admin/state", timeout=10,
                             headers={"Authorization": "Bearer admin-secret"})
        assert state.status_code == 200 and state.json()["stable"]
        missing = requests.get(dyno.url + "/no-such-page", timeout=5)
        assert (missing.status_code, missing.headers["Content-Type"]) == (404, "application/json")
    finally:
        code = dyno.sigterm()
    assert code == 0, dyno.log()[-3000:]
    assert (slug.app / "var" / "router-state.db").is_file()  # app.json's ROUTER_STATE_URL


def test_model_role_stops_cleanly_on_sigterm(model_dynos: dict[str, Dyno]) -> None:
    dyno = model_dynos["v2"]
    requests.post(dyno.url + "/predict", json={"instances": [ROW]}, timeout=10)

    assert dyno.sigterm() == 0, dyno.log()[-3000:]


def test_without_app_role_the_process_says_what_to_set(slug: Slug, tmp_path: Path) -> None:
    dyno = Dyno(slug, tmp_path / "none.log", APP_ROLE="")
    code = dyno.proc.wait(120)
    dyno.sigterm()  # already gone: this only closes its log

    assert code != 0
    assert "set APP_ROLE" in dyno.log()
