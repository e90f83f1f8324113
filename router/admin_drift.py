"""``GET /admin/drift``: the input columns drifting most in each slot, from each slot's ``GET /drift``.

Each slot is asked through the router's own upstream pool, with the model services' access token,
like the slot version checks (``router.slots``); a slot that does not answer is reported with
why, never as an error of the whole call.

    GET /admin/drift?top=5
    {"top": 5, "slots": {"blue": {"version": "v1", "role": "stable", "available": true,
      "window_rows": 5000, "columns": [{"name": "age", "psi": 0.31, "reading": "major"}, ...]}}}
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from flask import Response

from common.errors import json_response
from router.admin import _ctx, _query_int, admin
from router.slots import CHECK_BUDGET_S, access_refused
from router.upstream import UpstreamError, UpstreamPool


def top_columns(doc: dict[str, Any], top: int) -> dict[str, Any]:
    """A slot's ``GET /drift`` answer cut to what the dashboard shows: the ``top`` columns."""
    if not doc.get("available"):
        return {"available": False, "problem": None,
                "reason": str(doc.get("reason") or "the slot reports no drift")}
    window = doc.get("window") or {}
    columns = [{"name": c.get("name"), "psi": c.get("psi"), "reading": c.get("reading")}
               for c in doc.get("columns", [])[:top] if isinstance(c, dict)]
    return {"available": True, "problem": None, "window_rows": window.get("rows"),
            "min_rows": window.get("min_rows"), "columns": columns}


def ask_drift(pool: UpstreamPool, headers: list[tuple[str, str]], top: int) -> dict[str, Any]:
    """One slot's drift, or why there is none."""
    problem = None
    try:
        resp = pool.request("GET", "/drift", b"", headers, time.monotonic() + CHECK_BUDGET_S)
        if resp.status == 401:
            problem = access_refused(any(n.lower() == "authorization" for n, _ in headers))
        elif resp.status == 404:
            problem = "GET /drift answered 404: the slot runs a model service without drift"
        elif resp.status != 200:
            problem = f"GET /drift answered {resp.status}"
        else:
            doc = orjson.loads(resp.body)
            if isinstance(doc, dict):
                return top_columns(doc, top)
            problem = "GET /drift did not answer a JSON object"
    except UpstreamError as exc:
        problem = f"unreachable: {exc}"
    except orjson.JSONDecodeError:
        problem = "GET /drift did not answer JSON"
    return {"available": False, "problem": problem, "reason": None}


@admin.get("/drift")
def drift() -> Response:
    """Per slot: the version it serves, its role and its ``top`` columns by PSI."""
    top = _query_int("top", 5, 1, 100)
    ctx = _ctx()
    routing = ctx.live.current.routing
    headers = list(ctx.config.model_headers)
    slots = {}
    for slot, pool in ctx.pools.items():
        role = ("stable" if slot == routing.stable
                else "candidate" if slot == routing.candidate else None)
        slots[slot] = {"version": ctx.slots.get(slot), "role": role,
                       **ask_drift(pool, headers, top)}
    return json_response({"top": top, "slots": slots})
