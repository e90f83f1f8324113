"""The Procfile's ``web`` process: serves the role named by ``APP_ROLE`` on ``$PORT``.

``APP_ROLE=model`` (with ``MODEL_VERSION``) serves a model service; ``APP_ROLE=router`` the router.
"""

from __future__ import annotations

import os
import sys

from serving.process import ROUTER_WORKERS, bind_address, exec_server

# role -> (WSGI target, default port, default worker processes)
ROLES = {"model": ("model_service.wsgi:app", 8001, 2), "router": ("router.wsgi:app", 8000, ROUTER_WORKERS)}


def main() -> None:
    role = os.environ.get("APP_ROLE", "").strip()
    if role not in ROLES:
        sys.exit(f"set APP_ROLE to one of: {', '.join(sorted(ROLES))} (got {role!r})")
    target, default_port, default_workers = ROLES[role]
    exec_server(target, bind_address(None, None, default_port), default_workers=default_workers)


if __name__ == "__main__":
    main()
