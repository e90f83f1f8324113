"""``GET /admin/drift``: the input columns drifting most in each slot, from each slot's ``GET /drift``.

Each slot is asked through the router's own upstream pool, with the model services' access token,
like the slot version checks (``router.slots``); a slot that does not answer is reported with
why, never as an error of the whole call.

    GET /admin/drift?top=5
    {"top": 5, "slots": {"blue": {"version": "v1", "role": "stable", "available": true,
      "window_rows": 5000, "columns": [{"name": "age", "psi": 0.31, "reading": "major"}, ...]}}}
"""

from __future__ import annotations


from flask import Response

from common.errors import json_response
from router.admin import _ctx, _query_int, admin
from router.drift_client import ask_drift


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
