"""Asking a slot's model service for its input drift (``GET /drift``), cut to its top columns.

Used by ``GET /admin/drift`` and by the rollout controller, which puts what the slots say into
each analysis's evidence. A slot that does not answer is described, never an error.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

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
