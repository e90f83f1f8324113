"""Bearer-token checks for admin endpoints, compared in constant time."""

from __future__ import annotations

import hmac

from flask import Request

from common.errors import ServiceUnavailable, Unauthorized


def require_bearer(request: Request, token: str | None, variable: str) -> None:
    """Raise unless ``request`` carries ``Authorization: Bearer <token>``.

    No token configured means the admin API is off (503 naming ``variable``); a missing or wrong
    token is a 401. Tokens in the query string are never accepted.
    """
    if not token:
        raise ServiceUnavailable(
            f"the admin API is disabled: set {variable} to enable it", code="admin_disabled"
        )
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise Unauthorized(
            "missing or wrong admin token: send the header 'Authorization: Bearer <token>'"
        )
