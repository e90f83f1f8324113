"""The model being served, swapped atomically, and kept in step across worker processes.

A reload loads and verifies the new artifact first, then replaces one reference: requests that
already took the old model finish on it. With several worker processes, the served version is
also written to a control file that every worker watches.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path

from metrics.model import ModelMetrics
from model_service.artifacts import ArtifactError, LoadedModel, load_artifact

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 0.1


class ModelHolder:
    """Holds the current :class:`LoadedModel`; ``current`` is None until one loads."""

    def __init__(self, artifacts: str, metrics: ModelMetrics, control_file: str | None) -> None:
        self.artifacts = artifacts
        self.metrics = metrics
        self.control_file = Path(control_file) if control_file else None
        self.current: LoadedModel | None = None
        self.load_error: str | None = None
        self._lock = threading.Lock()
        self._seen_mtime: int | None = None

    def start(self, version: str) -> None:
        """Load ``version`` (or the version a sibling worker already switched to)."""
        wanted = self._controlled_version() or version
        try:
            self.swap(load_artifact(self.artifacts, wanted))
        except ArtifactError as exc:
            self.load_error = str(exc)
            log.error("model %s not loaded: %s", wanted, exc)
        if self.control_file is not None:
            threading.Thread(target=self._watch, name="model-control", daemon=True).start()

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Make ``model`` the served one; returns the previous model."""
        with self._lock:
            previous = self.current
            self.current = model
            self.load_error = None
        log.info("worker %d serves %s (%s prediction)", os.getpid(), model.version, model.prediction)
        prev_key = (previous.version, previous.sha256) if previous else None
        self.metrics.serving(model.version, model.sha256, prev_key)
        return previous

    def reload(self, version: str) -> tuple[LoadedModel, LoadedModel | None]:
        """Verify and load ``version``, swap it in, and tell sibling workers."""
        model = load_artifact(self.artifacts, version)
        previous = self.swap(model)
        if self.control_file is not None:
            self._write_control(version)
        return model, previous

    def _write_control(self, version: str) -> None:
        assert self.control_file is not None
        self.control_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.control_file.parent, prefix=".control.")
        with os.fdopen(fd, "w") as fh:
            fh.write(version)
        os.replace(tmp, self.control_file)

    def _controlled_version(self) -> str | None:
        if self.control_file is None:
            return None
        try:
            stat = self.control_file.stat()
            self._seen_mtime = stat.st_mtime_ns
            return self.control_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _watch(self) -> None:
        assert self.control_file is not None
        event = threading.Event()
        while not event.wait(WATCH_INTERVAL_S):
            try:
                mtime = self.control_file.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if mtime == self._seen_mtime:
                continue
            version = self._controlled_version()
            current = self.current
            if version and (current is None or current.version != version):
                try:
                    self.swap(load_artifact(self.artifacts, version))
                    log.info("worker %d now serves %s", os.getpid(), version)
                except ArtifactError as exc:
                    log.error("could not follow reload to %s: %s", version, exc)
