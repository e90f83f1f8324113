"""Command line of the router: ``python -m router serve [--port P]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router", description="the model traffic router")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the router with gunicorn")
    serve.add_argument("--port", type=int, help="port (default: $PORT, else 8000)")
    serve.add_argument("--bind", help="full gunicorn bind address, e.g. 127.0.0.1:9000 or fd://3")
    serve.add_argument("--workers", type=int, help="worker processes (default: $WEB_CONCURRENCY or 1)")
    args = parser.parse_args(argv)

    from common.config import ConfigError
    from serving.process import ROUTER_WORKERS, bind_address, exec_server
    from router.config import RouterConfig

    try:
        RouterConfig.from_env()  # fail here, with the variable's name, not inside every worker
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    exec_server("router.wsgi:app", bind_address(args.bind, args.port, 8000), args.workers,
                default_workers=ROUTER_WORKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
