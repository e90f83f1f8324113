"""The admin API: read and change the routing state, promote, roll back, read the audit log.

Every call needs ``Authorization: Bearer $ROUTER_ADMIN_TOKEN``. Inputs are validated before
anything changes; each accepted change is one compare-and-set with its audit event.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, current_app, request

from common.auth import require_bearer
from common.body import read_json_object
from common.errors import (
    BadRequest,
    Conflict,
    PreconditionFailed,
    ServiceUnavailable,
    Unprocessable,
    json_response,
)
from router.context import RouterContext
from router.live_state import Snapshot, with_routing
from router.rollout import ACTIVE
from router.state import StaleState, StoreUnavailable
from strategies import NoCandidate, StrategyError, get, names

admin = Blueprint("admin", __name__, url_prefix="/admin")

PATCHABLE = ("strategy", "canary_weight", "shadow_percent", "stable", "candidate")
_ACTOR = re.compile(r"^[A-Za-z0-9@._:-]{1,64}$")
_MAX_ADMIN_BODY = 64 * 1024
_MAX_EVENT_ID = 2**63 - 1  # event ids are 64-bit in every store


def _ctx() -> RouterContext:
    return current_app.extensions["router"]  # type: ignore[no-any-return]


@admin.before_request
def _authenticate() -> None:
    require_bearer(request, _ctx().config.admin_token, "ROUTER_ADMIN_TOKEN")


@admin.errorhandler(StaleState)
def _stale(err: StaleState) -> Response:
    exc = PreconditionFailed(
        f"the state changed: config_version is now {err.current_version}; "
        "GET /admin/state and retry with the new If-Match",
        details={"config_version": err.current_version},
    )
    return json_response(exc.body(), exc.status, {"ETag": f'"{err.current_version}"'})


@admin.errorhandler(StoreUnavailable)
def _store_down(err: StoreUnavailable) -> Response:
    ctx = _ctx()
    exc = ServiceUnavailable(
        f"{err}; changes are refused until it answers, routing continues on config_version "
        f"{ctx.live.current.config_version}",
        code="state_store_unavailable",
    )
    return json_response(exc.body(), exc.status, {"Retry-After": "1"})


def _actor() -> str:
    given = request.headers.get("X-Actor", "")
    return given if _ACTOR.match(given) else "admin-api"


def _is_decimal(text: str) -> bool:
    """ASCII digits only, short enough for int(): str.isdigit() alone also takes "²"."""
    return 0 < len(text) <= 20 and text.isascii() and text.isdigit()


def _if_match() -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    tag = raw.strip().removeprefix("W/").strip('"')
    if not _is_decimal(tag):
        raise BadRequest(f"If-Match must be a config_version like \"7\", got {raw!r}")
    return int(tag)


def _body(required: bool) -> dict[str, Any]:
    if not required and not request.content_length and "chunked" not in request.headers.get(
        "Transfer-Encoding", ""
    ):
        return {}
    return read_json_object(request, _MAX_ADMIN_BODY)


def _reason(doc: dict[str, Any]) -> str | None:
    reason = doc.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
        raise Unprocessable('"reason" must be a string of at most 500 characters')
    return reason


def _percent(doc: dict[str, Any], name: str) -> int:
    value = doc[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise Unprocessable(f'"{name}" must be an integer from 0 to 100, got {value!r}')
    return value


def validate_patch(doc: dict[str, Any], upstreams: dict[str, str]) -> dict[str, Any]:
    """The routing fields to change, checked; raises Unprocessable naming the problem."""
    if "upstreams" in doc or any("url" in str(k).lower() for k in doc):
        raise Unprocessable(
            "upstream URLs are fixed at start (ROUTER_UPSTREAMS) and cannot be changed "
            "through the API", code="forbidden_field",
        )
    unknown = sorted(set(doc) - set(PATCHABLE) - {"reason"})
    if unknown:
        raise Unprocessable(
            f"unknown field(s) {unknown}; accepted: {', '.join(PATCHABLE)}, reason",
            code="unknown_field",
        )
    changes: dict[str, Any] = {}
    if "strategy" in doc:
        if not isinstance(doc["strategy"], str) or doc["strategy"] not in names():
            raise Unprocessable(
                f"unknown strategy {doc['strategy']!r}; valid strategies: {', '.join(names())}",
                code="unknown_strategy",
            )
        changes["strategy"] = doc["strategy"]
    for name in ("canary_weight", "shadow_percent"):
        if name in doc:
            changes[name] = _percent(doc, name)
    for role in ("stable", "candidate"):
        if role in doc:
            label = doc[role]
            if label is None and role == "candidate":
                changes[role] = None
                continue
            if not isinstance(label, str) or label not in upstreams:
                raise Unprocessable(
                    f'"{role}" must be one of the slots: {", ".join(upstreams)}',
                    code="unknown_version",
                )
            changes[role] = label
    if not changes:
        raise Unprocessable(f"nothing to change; send one or more of: {', '.join(PATCHABLE)}")
    return changes


def slots_body(ctx: RouterContext, snap: Snapshot) -> dict[str, Any]:
    """Every slot: its URL, the version it serves, its role, whether it gets traffic, and why the
    router cannot connect to it (``error``: e.g. its TLS certificate is not trusted), if it cannot."""
    routing = snap.routing
    weights = ctx.weights(routing)
    out = {}
    for slot, url in ctx.config.upstreams.items():
        role = ("stable" if slot == routing.stable
                else "candidate" if slot == routing.candidate else None)
        mirrored = slot == routing.candidate and routing.shadow_percent > 0
        out[slot] = {"url": url, "version": ctx.slots.get(slot), "role": role,
                     "weight": weights.get(slot, 0),
                     "idle": not weights.get(slot, 0) and not mirrored,
                     "problem": ctx.slots.problem(slot)}
    return out


def state_body(ctx: RouterContext, snap: Snapshot) -> dict[str, Any]:
    routing = snap.routing
    return {
        "config_version": snap.config_version,
        "strategy": routing.strategy,
        "stable": routing.stable,
        "stable_version": ctx.slots.get(routing.stable),
        "candidate": routing.candidate,
        "candidate_version": ctx.slots.get(routing.candidate) if routing.candidate else None,
        "canary_weight": routing.canary_weight,
        "shadow_percent": routing.shadow_percent,
        "previous_stable": routing.previous_stable,
        "weights": ctx.weights(routing),
        "upstreams": dict(ctx.config.upstreams),
        "slots": slots_body(ctx, snap),
        "rollout": snap.rollout,
        "store": {"reachable": ctx.live.store_ok, "error": ctx.live.last_error},
    }


def _state_response(snap: Snapshot) -> Response:
    return json_response(state_body(_ctx(), snap), headers={"ETag": f'"{snap.config_version}"'})


@admin.get("/state")
def read_state() -> Response:
    ctx = _ctx()
    ctx.slots.refresh()  # what each slot serves now, not when this worker last looked
    return _state_response(ctx.live.refresh())


@admin.patch("/state")
def patch_state() -> Response:
    ctx = _ctx()
    if_match = _if_match()
    doc = _body(required=True)
    changes = validate_patch(doc, ctx.config.upstreams)
    reason = _reason(doc)

    def mutate(snap: Snapshot) -> Snapshot:
        after = with_routing(snap, **changes)
        if after.routing.candidate is not None and after.routing.candidate == after.routing.stable:
            raise Unprocessable("stable and candidate must be different versions")
        if after.routing.candidate is None and (after.routing.canary_weight or after.routing.shadow_percent):
            raise Unprocessable("canary_weight and shadow_percent need a candidate")
        return after

    snap = ctx.live.change(mutate, actor=_actor(), action="update", reason=reason, if_match=if_match)
    return _state_response(snap)


def _transition(action: str) -> Response:
    ctx = _ctx()
    if_match = _if_match()
    doc = _body(required=False)
    unknown = sorted(set(doc) - {"reason"})
    if unknown:
        raise Unprocessable(f"unknown field(s) {unknown}; only \"reason\" is accepted")
    reason = _reason(doc)

    def mutate(snap: Snapshot) -> Snapshot:
        strategy = get(snap.routing.strategy)
        try:
            routing = strategy.promote(snap.routing) if action == "promote" else strategy.rollback(snap.routing)
        except NoCandidate:
            raise Conflict("there is no candidate to promote; set one with PATCH /admin/state") from None
        except StrategyError as exc:
            raise Conflict(str(exc)) from None
        rollout = snap.rollout
        if rollout and rollout.get("status") in ACTIVE:
            if action == "rollback" and rollout.get("restore_version"):
                ctx.controller.reload_stable(rollout["restore_version"])
            status = "aborted" if action == "rollback" else "promoted"
            rollout = {**rollout, "status": status, "phase": "done"}
        return Snapshot(snap.config_version, routing, rollout)

    snap = ctx.live.change(mutate, actor=_actor(), action=action, reason=reason, if_match=if_match)
    return _state_response(snap)


@admin.post("/promote")
def promote() -> Response:
    return _transition("promote")


@admin.post("/rollback")
def rollback() -> Response:
    return _transition("rollback")


@admin.get("/events")
def events() -> Response:
    limit = _query_int("limit", 100, 1, 1000)
    after = _query_int("after", 0, 0, _MAX_EVENT_ID)
    return json_response({"events": _ctx().store.events(limit=limit, after=after)})


@admin.get("/releases")
def releases() -> Response:
    """The release history, oldest first: one record per rollout."""
    limit = _query_int("limit", 100, 1, 1000)
    return json_response({"releases": _ctx().store.releases(limit=limit)})


def _query_int(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _is_decimal(raw) or not lo <= int(raw) <= hi:
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}, got {raw[:40]!r}")
    return int(raw)


