"""``make run``: v1 on 8001, v2 on 8002 and the router on 8000, on loopback, until Ctrl-C.

Generates an admin token unless ROUTER_ADMIN_TOKEN is set, prints the URLs and the token, and
stops all three servers (by PID) when interrupted or when one of them exits.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

import requests

PORTS = {"v1": 8001, "v2": 8002}
ROUTER_PORT = 8000


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C reaches only this process, which then stops each server
    # with SIGTERM (a graceful shutdown), rather than every worker at once with SIGINT.
    return subprocess.Popen([sys.executable, *argv], env=env, start_new_session=True)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if requests.get(url + "/ready", timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


def main() -> int:
    token = os.environ.get("ROUTER_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    model_token = os.environ.get("MODEL_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    base = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "SERVICE_RUNTIME_DIR")}
    base["MODEL_ADMIN_TOKEN"] = model_token
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls = {v: f"http://127.0.0.1:{p}" for v, p in PORTS.items()}
    for version, port in PORTS.items():
        procs[version] = _start(["-m", "model_service", "serve", "--version", version,
                                 "--port", str(port)], base)
    router_env = {
        **base,
        "ROUTER_UPSTREAMS": ",".join(f"{v}={u}" for v, u in urls.items()),
        "ROUTER_ADMIN_TOKEN": token,
        "ROUTER_STATE_URL": os.environ.get("ROUTER_STATE_URL", "var/router-state.db"),
    }
    os.makedirs("var", exist_ok=True)
    procs["router"] = _start(["-m", "router", "serve", "--port", str(ROUTER_PORT)], router_env)
    router_url = f"http://127.0.0.1:{ROUTER_PORT}"

    def stop(*_: object) -> None:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        for name, url in {**urls, "router": router_url}.items():
            if not _wait_ready(url, procs[name]):
                print(f"error: {name} did not become ready at {url}; see the log above", file=sys.stderr)
                stop()
                return 1
        print(
            "\nStack is up:\n"
            f"  router         {router_url}   (POST /predict, /admin/*, /metrics, /dashboard)\n"
            f"  model v1       {urls['v1']}\n"
            f"  model v2       {urls['v2']}\n"
            f"  admin token    {token}\n"
            f"  model token    {model_token}   (POST /admin/reload on a model service)\n\n"
            f"  export ROLLOUT_URL={router_url} ROLLOUT_TOKEN={token}\n"
            "Press Ctrl-C to stop all three.\n",
            flush=True,
        )
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        dead = [n for n, p in procs.items() if p.poll() is not None]
        print(f"error: {', '.join(dead)} exited; stopping the stack", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
