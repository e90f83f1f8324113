"""The Procfile's ``web`` process started as Heroku starts it, once per role.

Heroku builds the slug (requirements.txt, then bin/post_compile), sets ``PORT`` and the app's
config vars, runs the Procfile command through the shell from the app root, and at shutdown sends
SIGTERM to every process of the dyno, then SIGKILL 30 s later.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.servers import ROOT, free_port, wait_until

ROW = [17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871, 1.095,
       0.9053, 8.589, 153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193, 25.38, 17.33,
       184.6, 2019.0, 0.1622, 0.6656, 0.7119, 0.2654, 0.4601, 0.1189]
SERVER_PRIVATE = ("PROMETHEUS_MULTIPROC_DIR", "SERVICE_RUNTIME_DIR")


def procfile() -> dict[str, str]:
    """Process types of the Procfile: name -> command."""
    types = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            types[name.strip()] = command.strip()
    return types


def slug_env(**config: str) -> dict[str, str]:
    """This environment minus the roles' settings, the slug's python first on PATH, plus config."""
    env = {k: v for k, v in os.environ.items()
           if k not in SERVER_PRIVATE and not k.startswith(("MODEL_", "ROUTER_", "APP_ROLE"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**env, **config}


class Dyno:
    """The ``web`` command under ``bash -c`` in a process group of its own, like a dyno."""

    def __init__(self, log: Path, **config: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        env = slug_env(**config, PORT=str(self.port), WEB_CONCURRENCY="2")
        self._log = open(log, "wb")  # noqa: SIM115 (open for the process's whole life)
        self.proc = subprocess.Popen(["bash", "-c", procfile()["web"]], cwd=ROOT, env=env,
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
def slug_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Artifacts built by bin/post_compile, the buildpack's hook after installing requirements."""
    folder = tmp_path_factory.mktemp("slug") / "artifacts"
    proc = subprocess.run(["bash", "bin/post_compile"], check=False, cwd=ROOT,
                          env=slug_env(MODEL_ARTIFACTS=str(folder)), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder


@pytest.fixture(scope="module")
def model_dyno(slug_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dyno]:
    dyno = Dyno(tmp_path_factory.mktemp("dyno") / "model.log", APP_ROLE="model",
                MODEL_VERSION="v1", MODEL_ARTIFACTS=str(slug_artifacts),
                MODEL_ADMIN_TOKEN="model-secret")
    try:
        yield dyno.wait_ready()
    finally:
        dyno.sigterm()


def test_procfile_declares_one_web_process() -> None:
    assert list(procfile()) == ["web"]


def test_post_compile_trains_every_version(slug_artifacts: Path) -> None:
    for version in ("v1", "v2"):
        assert (slug_artifacts / version / "metadata.json").is_file()
        assert (slug_artifacts / version / "model.joblib").is_file()


def test_model_role_serves_on_port(model_dyno: Dyno) -> None:
    resp = requests.post(model_dyno.url + "/predict", json={"instances": [ROW]}, timeout=10)

    assert resp.status_code == 200
    assert resp.json()["model_version"] == "v1"
    assert f"0.0.0.0:{model_dyno.port}" in model_dyno.log()  # every interface, as Heroku needs


def test_router_role_serves_in_front_of_the_model_and_stops_cleanly(model_dyno: Dyno,
                                                                    tmp_path: Path) -> None:
    dyno = Dyno(tmp_path / "router.log", APP_ROLE="router", ROUTER_UPSTREAMS=f"v1={model_dyno.url}",
                ROUTER_ADMIN_TOKEN="admin-secret", ROUTER_STATE_URL=str(tmp_path / "state.db"))
    try:
        dyno.wait_ready()
        resp = requests.post(dyno.url + "/predict", json={"instances": [ROW]}, timeout=10)
        assert resp.status_code == 200 and resp.headers["X-Model-Version"] == "v1"
        missing = requests.get(dyno.url + "/no-such-page", timeout=5)
        assert (missing.status_code, missing.headers["Content-Type"]) == (404, "application/json")
    finally:
        code = dyno.sigterm()
    assert code == 0, dyno.log()[-3000:]


def test_model_role_stops_cleanly_on_sigterm(model_dyno: Dyno) -> None:
    requests.post(model_dyno.url + "/predict", json={"instances": [ROW]}, timeout=10)

    assert model_dyno.sigterm() == 0, model_dyno.log()[-3000:]


def test_without_app_role_the_process_says_what_to_set(tmp_path: Path) -> None:
    dyno = Dyno(tmp_path / "none.log")
    code = dyno.proc.wait(120)
    dyno.sigterm()  # already gone: this only closes its log

    assert code != 0
    assert "set APP_ROLE" in dyno.log()
