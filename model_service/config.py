"""Model service settings, read from the environment in one place and validated at start."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import ConfigError, env_float, env_int, env_str, env_token, environ

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
        )
