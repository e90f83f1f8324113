"""The dashboard: one hand-written page (``GET /dashboard``) and its static files, served as is.

The page needs no token to load: it asks the person for the admin token, keeps it in the
browser tab at most, and calls the admin API with it. Nothing is fetched from another host,
and the Content-Security-Policy says so.

    >>> app.register_blueprint(dashboard)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from flask import Blueprint, Response, request

from common.errors import NotFound

dashboard = Blueprint("dashboard", __name__)

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    digest: str  # short content hash: the ETag, and the cache-busting ?v= of asset URLs


def _load(name: str, content_type: str) -> Asset:
    body = (STATIC / name).read_bytes()
    return Asset(body, content_type, hashlib.sha256(body).hexdigest()[:16])


@cache
def _assets() -> dict[str, Asset]:
    return {name: _load(name, content_type) for name, content_type in ASSETS.items()}


@cache
def _page() -> Asset:
    """The HTML with each asset URL pinned to its content hash, so assets can be cached for good."""
    html = (STATIC / "dashboard.html").read_text(encoding="utf-8")
    for name, asset in _assets().items():
        html = html.replace(f"dashboard/static/{name}", f"dashboard/static/{name}?v={asset.digest}")
    body = html.encode()
    return Asset(body, "text/html; charset=utf-8", hashlib.sha256(body).hexdigest()[:16])


def _serve(asset: Asset, cache_control: str) -> Response:
    etag = f'"{asset.digest}"'
    headers = {**_SECURITY_HEADERS, "Cache-Control": cache_control, "ETag": etag}
    if etag in request.headers.get("If-None-Match", ""):
        return Response(status=304, headers=headers)
    return Response(asset.body, headers=headers, content_type=asset.content_type)


@dashboard.get("/dashboard")
def page() -> Response:
    # Revalidated on every load (cheap: ETag), so a new router version shows its new page.
    return _serve(_page(), "no-cache")


@dashboard.get("/dashboard/static/<name>")
def static_file(name: str) -> Response:
    asset = _assets().get(name)
    if asset is None:
        raise NotFound(f"no dashboard file {name!r}; files: {', '.join(ASSETS)}")
    pinned = request.args.get("v") == asset.digest
    return _serve(asset, _IMMUTABLE if pinned else "no-cache")
