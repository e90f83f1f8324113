"""Model service settings, read from the environment in one place and validated at start."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import ConfigError, env_float, env_int, env_str, env_token, environ
from model_service.drift import DriftSettings

# What POST /admin/reload accepts as a version: one folder name under the artifacts folder.
VERSION_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _runtime_control_file(env: Mapping[str, str]) -> str | None:
    runtime = env_str(env, "SERVICE_RUNTIME_DIR")
    return f"{runtime}/served-version" if runtime else None


@dataclass(frozen=True)
class ModelServiceConfig:
    """Everything the prediction app needs to start."""

    version: str = "v1"
    artifacts: str = "artifacts"
    admin_token: str | None = None
    access_token: str | None = None  # every path but /health and /admin/* needs it when set
    metrics_token: str | None = None  # /metrics needs it (instead of access_token) when set
    fault_error_rate: float = 0.0
    fault_latency_ms: float = 0.0
    max_rows: int = 10_000
    max_body_bytes: int = 8 * 1024 * 1024
    control_file: str | None = None  # shared by worker processes so a reload reaches all of them
    drift: DriftSettings = DriftSettings()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ModelServiceConfig:
        env = environ() if env is None else env
        version = env_str(env, "MODEL_VERSION", "v1")
        assert version is not None
        if not version.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"MODEL_VERSION={version!r} must be a label like v1 or v2")
        return cls(
            version=version,
            artifacts=env_str(env, "MODEL_ARTIFACTS", "artifacts") or "artifacts",
            admin_token=env_str(env, "MODEL_ADMIN_TOKEN"),
            access_token=env_token(env, "MODEL_ACCESS_TOKEN"),
            metrics_token=env_token(env, "METRICS_TOKEN"),
            fault_error_rate=env_float(env, "FAULT_ERROR_RATE", 0.0, 0.0, 1.0),
            fault_latency_ms=env_float(env, "FAULT_LATENCY_MS", 0.0, 0.0, 60_000.0),
            max_rows=env_int(env, "MODEL_MAX_ROWS", 10_000, 1, 1_000_000),
            max_body_bytes=env_int(env, "MODEL_MAX_BODY_BYTES", 8 * 1024 * 1024, 1024),
            control_file=env_str(env, "MODEL_CONTROL_FILE") or _runtime_control_file(env),
            drift=drift_settings(env),
        )


def drift_settings(env: Mapping[str, str]) -> DriftSettings:
    """The input drift window: ``MODEL_DRIFT_WINDOW_ROWS`` (0: off), ``MODEL_DRIFT_WINDOW_S``,
    ``MODEL_DRIFT_MIN_ROWS``."""
    default = DriftSettings()
    rows = env_int(env, "MODEL_DRIFT_WINDOW_ROWS", default.window_rows, 0, 10_000_000)
    if 0 < rows < 10:
        raise ConfigError(f"MODEL_DRIFT_WINDOW_ROWS={rows} is too small a window: use at least 10 "
                          "rows (a few thousand for a steady PSI), or 0 to turn drift off")
    seconds = env_float(env, "MODEL_DRIFT_WINDOW_S", default.window_s, 10.0, 30 * 86400.0)
    min_rows = env_int(env, "MODEL_DRIFT_MIN_ROWS", min(default.min_rows, max(rows, 1)), 1)
    if rows and min_rows > rows:
        raise ConfigError(f"MODEL_DRIFT_MIN_ROWS={min_rows} is more than the window holds "
                          f"(MODEL_DRIFT_WINDOW_ROWS={rows}): PSI would never be reported")
    return DriftSettings(rows, seconds, min_rows)
