"""The data path: ``POST /predict`` forwarded to the version the strategy picks.

A bare WSGI callable in front of the Flask app (which serves everything else): the hot path
does only what forwarding needs. The strategy decides; this module sends.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from common.body import mimetype, read_environ_body
from common.errors import (
    INTERNAL_ERROR, APIError, BadGateway, BadRequest, GatewayTimeout, NotFound,
    UnsupportedMediaType, post_only, status_line,
)
from common.last_resort import REQUEST_ID_KEY
from metrics.router import RouterMetrics
from router.config import RouterConfig
from router.live_state import LiveState
from router.prediction_log import PredictionLog
from router.shadow import Mirror, MirrorJob, Tolerance
from router.slots import SlotVersions, access_refused
from router.upstream import (
    BadResponse, Timeout, Unreachable, UpstreamPool, UpstreamResponse, end_to_end,
)
from strategies import Decision, RequestFacts, route

log = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# What may go upstream (RFC 9110 5.1, 5.5): a token as the name; visible ASCII, SP, HTAB and
# obs-text as the value, all of it latin-1, so the request head always encodes byte for byte.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*\Z")
_INTERNAL = orjson.dumps(INTERNAL_ERROR.body())
_DROP_FROM_UPSTREAM = frozenset({"content-length", "date", "server", "x-model-version", "x-request-id"})
# X-Request-ID is re-added once, as the id the client is told (the given one only if usable).
_DROP_FROM_CLIENT = frozenset(
    {"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-route-to", "x-request-id"}
)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def client_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    """The client's end-to-end headers to send on, each one checked to be a valid field.

    The serving layer refuses such requests before they get here; this holds under any WSGI
    server, whose environ keys are upper-cased names (a case mapping can turn a latin-1 name
    into one that is not latin-1, e.g. 0xB5 into U+039C).
    """
    headers = []
    if environ.get("CONTENT_TYPE"):
        headers.append(("Content-Type", environ["CONTENT_TYPE"]))
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").title()
            if name.lower() not in _DROP_FROM_CLIENT:
                headers.append((name, value))
    for name, value in headers:
        if not _TOKEN.match(name) or not isinstance(value, str) or not _FIELD_VALUE.match(value):
            raise BadRequest(
                f"header {name[:40]!r} cannot be forwarded: send token names (letters, digits, "
                "!#$%&'*+-.^_`|~) and values of visible characters, spaces and tabs",
                code="invalid_header",
            )
    return end_to_end(headers)


def _served(resp: UpstreamResponse, slots: SlotVersions, slot: str) -> str:
    """The version an answer says it came from, else what the slot is known to serve."""
    for name, value in resp.headers:
        if name.lower() == "x-model-version" and value:
            return value
    return slots.label(slot)


class DataPath:
    """WSGI middleware: serves ``/predict`` itself, hands every other path to ``fallback_app``."""

    def __init__(self, fallback_app: Callable[..., Iterable[bytes]], config: RouterConfig,
                 live: LiveState, pools: dict[str, UpstreamPool], metrics: RouterMetrics,
                 mirror: Mirror, slots: SlotVersions,
                 predictions: PredictionLog | None = None) -> None:
        self.fallback_app = fallback_app
        self.slots = slots
        self.config = config
        self.live = live
        self.pools = pools
        self.metrics = metrics
        self.mirror = mirror
        self.predictions = predictions  # set when feedback is on
        self.model_headers = config.model_headers
        self.rng = random.Random()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/predict":
            return self.fallback_app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            return post_only(start_response)
        started = time.perf_counter()
        deadline = time.monotonic() + self.config.timeout_s
        given_id = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = given_id if _REQUEST_ID.match(given_id) else f"{self.rng.getrandbits(128):032x}"
        environ[REQUEST_ID_KEY] = request_id
        snapshot = self.live.current
        slot = snapshot.routing.stable
        served = None
        try:
            decision = self._decide(environ)
            slot = decision.version
            body = self._read(environ)
            headers = client_headers(environ)
            headers.append(("X-Request-ID", request_id))
            headers.append(("X-Forwarded-For", self._forwarded_for(environ)))
            headers += self.model_headers  # the client's Authorization never goes upstream
            resp, slot = self._forward(decision, body, headers, deadline)
            status, payload = resp.status, resp.body
            out = []
            for name, value in end_to_end(resp.headers):
                lower = name.lower()
                if lower == "x-model-version":
                    served = value
                elif lower not in _DROP_FROM_UPSTREAM:
                    out.append((name, value))
            self.slots.observed(slot, served)
            if self.predictions is not None and status == 200:
                self.predictions.remember(request_id, "served", served or self.slots.label(slot),
                                          slot, payload)
            if decision.mirror_to and status == 200:
                self.mirror.submit(MirrorJob(served or self.slots.label(slot), decision.mirror_to,
                                             body, headers, payload,
                                             Tolerance.of_rollout(snapshot.rollout), request_id))
        except APIError as err:
            status, payload = err.status, orjson.dumps(err.body())
            out = [("Content-Type", "application/json"), *err.headers]
        except Exception:  # the contract's JSON 500; how much of the body was read is unknown
            log.exception("unhandled error in POST /predict (request id %s)", request_id)
            status, payload = 500, _INTERNAL
            out = [("Content-Type", "application/json"), ("Connection", "close")]
        version = served or self.slots.label(slot)
        out += [("Content-Length", str(len(payload))), ("X-Model-Version", version),
                ("X-Request-ID", request_id)]
        if self.config.request_metrics:
            self.metrics.request(version, snapshot.routing.strategy, status,
                                 time.perf_counter() - started)
        start_response(status_line(status), out)
        return [payload]

    def _decide(self, environ: dict[str, Any]) -> Decision:
        forced = environ.get("HTTP_X_ROUTE_TO") if self.config.allow_route_to else None
        if forced is not None and forced not in self.pools:
            raise NotFound(
                f"X-Route-To names unknown slot {forced!r}; the slots: {', '.join(self.pools)}",
                code="unknown_version",
            )
        facts = RequestFacts(
            user_key=environ.get("HTTP_X_USER_ID") or None,
            forced_version=forced,
            draw=self.rng.random(),
            mirror_draw=self.rng.random(),
        )
        return route(self.live.current.routing, facts)

    def _forwarded_for(self, environ: dict[str, Any]) -> str:
        """The peer appended to the client's chain if the peer is a trusted proxy, else the peer.

        Anyone can send X-Forwarded-For; only a proxy of ROUTER_TRUSTED_PROXIES vouches for it.
        """
        peer = environ.get("REMOTE_ADDR", "")
        chain = environ.get("HTTP_X_FORWARDED_FOR", "").strip()
        if chain and self.config.trusts(peer):
            return f"{chain}, {peer}"
        return peer

    def _read(self, environ: dict[str, Any]) -> bytes:
        ctype = mimetype(environ)
        if ctype != "application/json":
            raise UnsupportedMediaType(
                f"Content-Type must be application/json, got {ctype or 'none'!r}"
            )
        return read_environ_body(environ, self.config.max_body_bytes)

    def _forward(self, decision: Decision, body: bytes, headers: list[tuple[str, str]],
                 deadline: float) -> tuple[UpstreamResponse, str]:
        tried = []
        for slot in (decision.version, decision.fallback):
            if slot is None or slot in tried:
                continue
            tried.append(slot)
            try:
                resp = self.pools[slot].request("POST", "/predict", body, headers, deadline)
            except Unreachable as exc:
                self.metrics.child(self.metrics.upstream_errors, self.slots.label(slot),
                                   exc.reason).inc()
                last = exc
                continue
            except Timeout:
                self.metrics.child(self.metrics.upstream_errors, self.slots.label(slot),
                                   "timeout").inc()
                raise GatewayTimeout(
                    f"slot {slot} ({self.slots.label(slot)}) did not answer within "
                    f"ROUTER_TIMEOUT_S={self.config.timeout_s:g} s", code="upstream_timeout",
                ) from None
            except BadResponse as exc:  # processed upstream, maybe: not sent again elsewhere
                self.metrics.child(self.metrics.upstream_errors, self.slots.label(slot),
                                   exc.reason).inc()
                raise BadGateway(f"slot {slot} ({self.slots.label(slot)}) answered badly: {exc}",
                                 code="upstream_bad_response") from None
            if resp.status >= 500:
                self.metrics.child(self.metrics.upstream_errors, _served(resp, self.slots, slot),
                                   "http_5xx").inc()
            elif resp.status == 401:  # the router's credential, not the client's: a 502
                self.metrics.child(self.metrics.upstream_errors, self.slots.label(slot),
                                   "unauthorized").inc()
                raise BadGateway(
                    f"slot {slot} {access_refused(self.config.model_access_token is not None)}",
                    code="upstream_unauthorized",
                )
            return resp, slot
        raise BadGateway(f"no model service answered: {last}",
                         code="upstream_tls_verify_failed" if last.reason == "tls_verify"
                         else "upstream_unreachable")
