"""Router settings, read from the environment in one place and validated at start-up."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

from common.config import (
    ConfigError, env_bool, env_float, env_int, env_str, env_token, environ,
)
from strategies import UnknownStrategy, get, names

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_INSTANCE = re.compile(r"[^\x00-\x1f\x7f]{1,256}")  # part of state store keys


def parse_upstreams(raw: str | None) -> dict[str, str]:
    """``v1=http://127.0.0.1:8001,v2=http://127.0.0.1:8002`` -> {label: base URL}."""
    if not raw:
        raise ConfigError(
            "ROUTER_UPSTREAMS is not set: give the model services as "
            "v1=http://127.0.0.1:8001,v2=http://127.0.0.1:8002"
        )
    upstreams: dict[str, str] = {}
    for item in raw.split(","):
        label, sep, url = item.strip().partition("=")
        label, url = label.strip(), url.strip().rstrip("/")
        if not sep or not _LABEL.match(label):
            raise ConfigError(f"ROUTER_UPSTREAMS entry {item!r} must look like v1=http://host:port")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("",):
            raise ConfigError(
                f"ROUTER_UPSTREAMS entry {label}={url!r} must be an http(s)://host[:port] URL"
            )
        if label in upstreams:
            raise ConfigError(f"ROUTER_UPSTREAMS names {label!r} twice")
        upstreams[label] = url
    return upstreams


def parse_trusted_proxies(raw: str | None) -> tuple[IPv4Network | IPv6Network, ...]:
    """``10.0.0.0/8,192.0.2.7`` -> the networks whose X-Forwarded-For the router keeps."""
    networks = []
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"ROUTER_TRUSTED_PROXIES entry {item!r} is not an IP address or CIDR block "
                "(e.g. 10.0.0.0/8,192.0.2.7)"
            ) from None
    return tuple(networks)


def instance_id(env: Mapping[str, str]) -> str:
    """This router instance's name: ROUTER_INSTANCE_ID, else Heroku's DYNO (``web.1``, the same
    after the dyno restarts), else the host name and the metrics folder its workers share (the
    host name and process id when there is none)."""
    named = env_str(env, "ROUTER_INSTANCE_ID") or env_str(env, "DYNO")
    if named:
        return named
    folder = env_str(env, "PROMETHEUS_MULTIPROC_DIR")
    return f"{socket.gethostname()}:{folder or os.getpid()}"


@dataclass(frozen=True)
class RouterConfig:
    """Everything the router needs to start; upstreams are fixed for the process's life."""

    upstreams: dict[str, str] = field(default_factory=dict)
    stable: str = ""
    candidate: str | None = None
    strategy: str = "release-in-place"
    admin_token: str | None = None
    state_url: str = "var/router-state.db"
    timeout_s: float = 10.0
    connect_timeout_s: float = 1.0
    allow_route_to: bool = True
    max_body_bytes: int = 8 * 1024 * 1024
    shadow_workers: int = 4
    shadow_queue: int = 64
    refresh_interval_s: float = 0.25
    model_admin_token: str | None = None
    model_access_token: str | None = None  # the model services' MODEL_ACCESS_TOKEN
    metrics_token: str | None = None  # /metrics needs it when set
    prometheus_url: str | None = None
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    request_metrics: bool = True  # off only to measure what recording costs (loadtest/bench.py)
    instance_id: str = field(default_factory=lambda: instance_id(environ()))
    counts_retention_s: float = 3600.0
    feedback_token: str | None = None  # POST /feedback needs it; unset: feedback is off
    feedback_retention_s: float = 7 * 86400.0
    feedback_max_requests: int = 1_000_000
    disagreement_samples: int = 100  # disagreeing rows kept per pair of versions, for review
    disagreement_retention_s: float = 7 * 86400.0  # a pair not compared for this long is forgotten

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ConfigError("ROUTER_UPSTREAMS must name at least one model service")
        for role, label in (("ROUTER_STABLE", self.stable), ("ROUTER_CANDIDATE", self.candidate)):
            if label is not None and label not in self.upstreams:
                raise ConfigError(
                    f"{role}={label!r} is not in ROUTER_UPSTREAMS ({', '.join(self.upstreams)})"
                )
        if self.candidate == self.stable:
            raise ConfigError("ROUTER_CANDIDATE must differ from ROUTER_STABLE")
        try:
            get(self.strategy)
        except UnknownStrategy:
            raise ConfigError(
                f"ROUTER_STRATEGY={self.strategy!r} is unknown; valid: {', '.join(names())}"
            ) from None
        if not _INSTANCE.fullmatch(self.instance_id):
            raise ConfigError(
                f"ROUTER_INSTANCE_ID={self.instance_id!r} must be 1 to 256 characters without "
                "control characters, e.g. web.1"
            )
        if self.connect_timeout_s > self.timeout_s:
            object.__setattr__(self, "connect_timeout_s", self.timeout_s)

    @property
    def model_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers for every request to a model service but a reload (which carries the admin
        token): ``Authorization`` with ROUTER_MODEL_ACCESS_TOKEN when it is set."""
        if self.model_access_token is None:
            return ()
        return (("Authorization", f"Bearer {self.model_access_token}"),)

    def trusts(self, peer: str) -> bool:
        """Whether the connection's peer address is one of ROUTER_TRUSTED_PROXIES."""
        if not self.trusted_proxies:
            return False
        try:
            address = ip_address(peer)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted_proxies)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RouterConfig:
        env = environ() if env is None else env
        upstreams = parse_upstreams(env_str(env, "ROUTER_UPSTREAMS"))
        labels = list(upstreams)
        return cls(
            upstreams=upstreams,
            stable=env_str(env, "ROUTER_STABLE", labels[0]) or labels[0],
            candidate=env_str(env, "ROUTER_CANDIDATE", labels[1] if len(labels) > 1 else None),
            strategy=env_str(env, "ROUTER_STRATEGY", "release-in-place") or "release-in-place",
            admin_token=env_str(env, "ROUTER_ADMIN_TOKEN"),
            state_url=env_str(env, "ROUTER_STATE_URL", "var/router-state.db") or "",
            timeout_s=env_float(env, "ROUTER_TIMEOUT_S", 10.0, 0.05, 29.0),
            connect_timeout_s=env_float(env, "ROUTER_CONNECT_TIMEOUT_S", 1.0, 0.01, 29.0),
            allow_route_to=env_bool(env, "ROUTER_ALLOW_ROUTE_TO", True),
            max_body_bytes=env_int(env, "ROUTER_MAX_BODY_BYTES", 8 * 1024 * 1024, 1024),
            shadow_workers=env_int(env, "ROUTER_SHADOW_WORKERS", 4, 1, 64),
            shadow_queue=env_int(env, "ROUTER_SHADOW_QUEUE", 64, 1, 10_000),
            refresh_interval_s=env_float(env, "ROUTER_REFRESH_S", 0.25, 0.01, 1.0),
            model_admin_token=env_str(env, "ROUTER_MODEL_ADMIN_TOKEN"),
            model_access_token=env_token(env, "ROUTER_MODEL_ACCESS_TOKEN"),
            metrics_token=env_token(env, "METRICS_TOKEN"),
            prometheus_url=env_str(env, "ROUTER_PROMETHEUS_URL"),
            trusted_proxies=parse_trusted_proxies(env_str(env, "ROUTER_TRUSTED_PROXIES")),
            request_metrics=env_bool(env, "ROUTER_REQUEST_METRICS", True),
            instance_id=instance_id(env),
            counts_retention_s=env_float(env, "ROUTER_COUNTS_RETENTION_S", 3600.0, 1.0, 604800.0),
            feedback_token=env_token(env, "ROUTER_FEEDBACK_TOKEN"),
            feedback_retention_s=env_float(env, "ROUTER_FEEDBACK_RETENTION_S", 7 * 86400.0, 1.0,
                                           90 * 86400.0),
            feedback_max_requests=env_int(env, "ROUTER_FEEDBACK_MAX_REQUESTS", 1_000_000, 1,
                                          100_000_000),
            disagreement_samples=env_int(env, "ROUTER_DISAGREEMENT_SAMPLES", 100, 0, 10_000),
            disagreement_retention_s=env_float(env, "ROUTER_DISAGREEMENT_RETENTION_S",
                                               7 * 86400.0, 1.0, 90 * 86400.0),
        )
