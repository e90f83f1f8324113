"""Reading typed settings from the environment, with errors that name the variable."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping


class ConfigError(ValueError):
    """A setting from the environment that cannot be used as given."""


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def env_float(
    env: Mapping[str, str], name: str, default: float, lo: float | None = None, hi: float | None = None
) -> float:
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name}={raw!r} must be between {lo} and {hi}")
    return value


def env_int(
    env: Mapping[str, str], name: str, default: int, lo: int | None = None, hi: int | None = None
) -> int:
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name}={raw!r} must be between {lo} and {hi}")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env_str(env, name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be true or false")


def environ() -> Mapping[str, str]:
    return os.environ


_TOKEN = re.compile(r"[\x21-\x7e]+")


def env_token(env: Mapping[str, str], name: str) -> str | None:
    """A bearer token: None when the variable is absent; set but empty, blank or not printable
    ASCII (it travels in an HTTP header) is an error, never a silently open endpoint."""
    raw = env.get(name)
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        raise ConfigError(
            f"{name} is set but empty: give it a secret (e.g. `openssl rand -hex 32`), or unset it"
        )
    if not _TOKEN.fullmatch(value):
        raise ConfigError(
            f"{name} must be printable ASCII without spaces (it is sent in an Authorization "
            "header), e.g. `openssl rand -hex 32`"
        )
    return value
