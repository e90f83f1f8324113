"""Artifacts are verified before they are unpickled, in the library and in a running service."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest
import requests
import sklearn

from model_service.artifacts import ArtifactError, file_sha256, load_artifact
from tests.model_service.conftest import error_of, post
from tests.servers import ServerProcess, model_service, wait_until

TOKEN = {"Authorization": "Bearer tamper-secret"}
OLD_SKLEARN = "1.2.2"


class _TouchOnLoad:
    """A pickle payload that creates a file when it is unpickled (stands in for hostile code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def model_file(folder: Path) -> Path:
    return folder / json.loads((folder / "metadata.json").read_text())["model_file"]


def _tamper(folder: Path) -> None:
    with open(model_file(folder), "ab") as fh:
        fh.write(b"\0")


def _write_metadata(folder: Path, **changes: Any) -> None:
    meta = json.loads((folder / "metadata.json").read_text())
    meta.update(changes)
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2))


@pytest.fixture(scope="module")
def doctored(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 intact, v2 with one byte appended, ``legacy`` (a v1) claiming an old scikit-learn."""
    root = tmp_path_factory.mktemp("doctored")
    shutil.copytree(artifacts / "v1", root / "v1")
    shutil.copytree(artifacts / "v2", root / "v2")
    _tamper(root / "v2")
    shutil.copytree(artifacts / "v1", root / "legacy")
    _write_metadata(root / "legacy", version="legacy", sklearn_version=OLD_SKLEARN)
    return root


def test_intact_artifact_loads(doctored: Path) -> None:
    model = load_artifact(doctored, "v1")
    assert model.version == "v1" and len(model.feature_names) == 30


def test_appended_byte_is_refused_naming_the_checksum(doctored: Path) -> None:
    with pytest.raises(ArtifactError, match="sha256") as caught:
        load_artifact(doctored, "v2")
    assert "package the version again" in str(caught.value)


def test_tampered_file_is_never_unpickled(artifacts: Path, tmp_path: Path) -> None:
    sandbox_marker = tmp_path / "payload-ran"
    joblib.dump(_TouchOnLoad(sandbox_marker), tmp_path / "probe.joblib")
    joblib.load(tmp_path / "probe.joblib")
    assert sandbox_marker.exists(), "the payload must run code when unpickled"

    marker = tmp_path / "payload-ran-in-service"
    folder = tmp_path / "art" / "v1"
    shutil.copytree(artifacts / "v1", folder)
    with open(model_file(folder), "wb") as fh:
        pickle.dump(_TouchOnLoad(marker), fh)
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(tmp_path / "art", "v1")
    assert not marker.exists()


def test_other_sklearn_version_is_refused_naming_both(doctored: Path) -> None:
    meta = json.loads((doctored / "legacy" / "metadata.json").read_text())
    assert meta["sha256"] == file_sha256(model_file(doctored / "legacy"))
    with pytest.raises(ArtifactError) as caught:
        load_artifact(doctored, "legacy")
    assert OLD_SKLEARN in str(caught.value) and sklearn.__version__ in str(caught.value)


def test_folder_holding_another_version_is_refused(doctored: Path, tmp_path: Path) -> None:
    shutil.copytree(doctored / "v1", tmp_path / "v2")
    with pytest.raises(ArtifactError, match="holds version 'v1', not 'v2'"):
        load_artifact(tmp_path, "v2")


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no folder", "python -m model_service train"),
        ("metadata not JSON", "not valid JSON"),
        ("model file missing", "is missing"),
    ],
)
def test_broken_artifact_says_what_to_do(
    doctored: Path, tmp_path: Path, breakage: str, message: str
) -> None:
    if breakage != "no folder":
        shutil.copytree(doctored / "v1", tmp_path / "v1")
    if breakage == "metadata not JSON":
        (tmp_path / "v1" / "metadata.json").write_text("{not json")
    if breakage == "model file missing":
        model_file(tmp_path / "v1").unlink()
    with pytest.raises(ArtifactError, match=message):
        load_artifact(tmp_path, "v1")


@pytest.fixture(scope="module")
def refusing_service(doctored: Path, log_dir: Path) -> Iterator[ServerProcess]:
    """``python -m model_service serve --version v2`` over the tampered v2."""
    with model_service(
        "v2", doctored, log_dir, WEB_CONCURRENCY="1", MODEL_ADMIN_TOKEN="tamper-secret"
    ) as server:

        def answers() -> bool:
            if server.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{server.log()}")
            try:
                return requests.get(server.url + "/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(answers, 90)
        yield server


def test_service_refuses_tampered_artifact_and_says_why(
    refusing_service: ServerProcess, features: list[str]
) -> None:
    ready = requests.get(refusing_service.url + "/ready", timeout=5)
    assert ready.status_code == 503
    error = error_of(ready)
    assert error["code"] == "not_ready" and "sha256" in error["message"]
    resp = post(refusing_service.url + "/predict", {"instances": [[1.0] * 30]})
    assert resp.status_code == 503 and error_of(resp)["code"] == "not_ready"
    assert requests.get(refusing_service.url + "/version", timeout=5).status_code == 503


def test_refusing_service_recovers_on_reload_and_keeps_refusing_bad_ones(
    refusing_service: ServerProcess, dataset: Any
) -> None:
    url = refusing_service.url
    legacy = post(url + "/admin/reload", {"version": "legacy"}, headers=TOKEN)
    assert legacy.status_code == 422
    error = error_of(legacy)
    assert error["code"] == "artifact_refused"
    assert OLD_SKLEARN in error["message"] and sklearn.__version__ in error["message"]
    assert requests.get(url + "/ready", timeout=5).status_code == 503

    good = post(url + "/admin/reload", {"version": "v1"}, headers=TOKEN)
    assert good.status_code == 200 and good.json()["model_version"] == "v1"
    assert good.json()["previous_version"] is None
    assert requests.get(url + "/ready", timeout=5).status_code == 200

    tampered = post(url + "/admin/reload", {"version": "v2"}, headers=TOKEN)
    assert tampered.status_code == 422 and "sha256" in error_of(tampered)["message"]
    answer = post(url + "/predict", {"instances": [dataset.data[0].tolist()]})
    assert answer.status_code == 200 and answer.json()["model_version"] == "v1"
    assert requests.get(url + "/version", timeout=5).json()["version"] == "v1"
