"""``make run``: v1 on 8001, v2 on 8002 and the router on 8000, on loopback, until Ctrl-C.

The admin tokens and the feedback token are kept across runs in ``var/tokens.env`` (mode 0600),
so the printed ``export ...`` line stays valid as long as the routing state in ``var/`` does;
``ROUTER_ADMIN_TOKEN``, ``MODEL_ADMIN_TOKEN`` and ``ROUTER_FEEDBACK_TOKEN`` in the environment
take precedence. With the feedback token set, the router keeps each answer for ``POST /feedback``.
The router gets the model services' token as ``ROUTER_MODEL_ADMIN_TOKEN``, so every strategy
works, including ``release-in-place``. ``MODEL_ACCESS_TOKEN`` and ``METRICS_TOKEN`` are not set
unless the environment sets them; a ``MODEL_ACCESS_TOKEN`` given there also becomes the router's
``ROUTER_MODEL_ACCESS_TOKEN``. ``DEVSTACK_PORT=P`` moves the three servers to P, P+1 and P+2
(``0``: any free ports). Ctrl-C, SIGTERM or SIGHUP stops each server once with SIGTERM; a second signal while they
stop only says that they are stopping.

    $ DEVSTACK_PORT=9000 python -m router.devstack
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

import requests

from common.config import ConfigError, env_int

TOKENS_FILE = Path("var/tokens.env")
TOKEN_NAMES = ("ROUTER_ADMIN_TOKEN", "MODEL_ADMIN_TOKEN", "ROUTER_FEEDBACK_TOKEN")
PORT_VARIABLE = "DEVSTACK_PORT"
DEFAULT_PORT = 8000
ROLES = ("router", "v1", "v2")  # the router on the base port, v1 and v2 on the next two
STOP_TIMEOUT_S = 30.0


class DevstackError(Exception):
    """Something the user must fix before the stack can start; one line on stderr."""


# -- tokens ----------------------------------------------------------------------------------------


def _read_tokens(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise DevstackError(f"cannot read {path}: {exc.strerror or exc}; delete it to make new "
                            "tokens") from None
    pairs = (line.partition("=") for line in text.splitlines() if not line.startswith("#"))
    return {name.strip(): value.strip() for name, _, value in pairs if name.strip() and value.strip()}


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a file that is 0600 from its creation on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file of that name may have been wider
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def local_tokens(path: Path = TOKENS_FILE, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each of TOKEN_NAMES: from the environment, else from ``path``, else new.

    New tokens are written to ``path`` (mode 0600) so the next run prints the same ones; a token
    taken from the environment is never written there.

        >>> local_tokens(Path("var/tokens.env"))["ROUTER_ADMIN_TOKEN"]  # doctest: +SKIP
    """
    env = os.environ if env is None else env
    stored = _read_tokens(path)
    tokens, missing = {}, False
    for name in TOKEN_NAMES:
        given = (env.get(name) or "").strip()
        if given:
            tokens[name] = given
            continue
        if not stored.get(name):
            stored[name] = secrets.token_urlsafe(24)
            missing = True
        tokens[name] = stored[name]
    if missing:
        lines = "".join(f"{name}={stored[name]}\n" for name in TOKEN_NAMES if stored.get(name))
        _write_private(path, "# tokens of `make run`, kept across runs; delete this file for new "
                             "ones\n" + lines)
    elif path.exists() and path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return tokens


# -- ports -----------------------------------------------------------------------------------------


def ports_from_env(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """The port of each role: ``$DEVSTACK_PORT`` (default 8000) and the next two; 0 for any."""
    env = os.environ if env is None else env
    base = env_int(env, PORT_VARIABLE, DEFAULT_PORT, 0, 65535 - len(ROLES) + 1)
    return {role: base + i if base else 0 for i, role in enumerate(ROLES)}


def _listen(role: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise DevstackError(
                f"port {port} ({role}) is in use, perhaps by another `make run`: stop it, or set "
                f"{PORT_VARIABLE} to use other ports ({PORT_VARIABLE}=9000: 9000-9002)") from None
        raise DevstackError(f"cannot listen on 127.0.0.1:{port} ({role}): {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


# -- processes -------------------------------------------------------------------------------------


class StopRequest:
    """Signal handler: the first SIGINT, SIGTERM or SIGHUP asks to stop; later ones are noted."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.signal: str | None = None

    def install(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, self)

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum).name
        else:  # os.write, not print: a print may be under way in the code this interrupted
            os.write(sys.stdout.fileno(), b"already stopping; waiting for the servers to exit\n")


def _start(argv: list[str], env: dict[str, str], sock: socket.socket) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C reaches only this process, which then stops each server
    # with SIGTERM (a graceful shutdown), rather than every worker at once with SIGINT.
    return subprocess.Popen([sys.executable, *argv, "--bind", f"fd://{sock.fileno()}"], env=env,
                            pass_fds=[sock.fileno()], start_new_session=True)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], stop: StopRequest,
                timeout: float = 60.0, headers: Mapping[str, str] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and stop.signal is None:
        if proc.poll() is not None:
            return False
        try:
            if requests.get(url + "/ready", headers=headers, timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


def _stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every server still running, once, then wait for all of them."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run(stop: StopRequest) -> int:
    ports = ports_from_env()
    tokens = local_tokens()
    socks = {role: _listen(role, port) for role, port in ports.items()}
    urls = {role: f"http://127.0.0.1:{sock.getsockname()[1]}" for role, sock in socks.items()}
    base = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "SERVICE_RUNTIME_DIR")}
    base["MODEL_ADMIN_TOKEN"] = tokens["MODEL_ADMIN_TOKEN"]
    router_env = {
        **base,
        "ROUTER_UPSTREAMS": f"v1={urls['v1']},v2={urls['v2']}",
        "ROUTER_ADMIN_TOKEN": tokens["ROUTER_ADMIN_TOKEN"],
        "ROUTER_MODEL_ADMIN_TOKEN": tokens["MODEL_ADMIN_TOKEN"],  # release-in-place reloads
        "ROUTER_FEEDBACK_TOKEN": tokens["ROUTER_FEEDBACK_TOKEN"],  # POST /feedback works locally
        "ROUTER_STATE_URL": os.environ.get("ROUTER_STATE_URL", "var/router-state.db"),
    }
    access = (base.get("MODEL_ACCESS_TOKEN") or "").strip()
    probe: dict[str, dict[str, str]] = {name: {} for name in ROLES}
    if access:  # the model services answer only with it, the router's checks included
        router_env.setdefault("ROUTER_MODEL_ACCESS_TOKEN", access)
        probe["v1"] = probe["v2"] = {"Authorization": f"Bearer {access}"}
    os.makedirs("var", exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for version in ("v1", "v2"):
            procs[version] = _start(["-m", "model_service", "serve", "--version", version], base,
                                    socks[version])
        procs["router"] = _start(["-m", "router", "serve"], router_env, socks["router"])
        for sock in socks.values():
            sock.close()  # the servers hold their own copies
        for name in ("v1", "v2", "router"):
            if not _wait_ready(urls[name], procs[name], stop, headers=probe[name]) \
                    and stop.signal is None:
                print(f"error: {name} did not become ready at {urls[name]}; see the log above",
                      file=sys.stderr)
                return 1
        if stop.signal is None:
            print(
                "\nStack is up:\n"
                f"  router         {urls['router']}   (POST /predict, /admin/*, /metrics, /dashboard)\n"
                f"  model v1       {urls['v1']}\n"
                f"  model v2       {urls['v2']}\n"
                f"  admin token    {tokens['ROUTER_ADMIN_TOKEN']}\n"
                f"  model token    {tokens['MODEL_ADMIN_TOKEN']}   (POST /admin/reload on a model "
                "service)\n"
                f"  feedback token {tokens['ROUTER_FEEDBACK_TOKEN']}   (POST /feedback on the "
                "router)\n"
                f"  tokens kept in {TOKENS_FILE} (the environment's ROUTER_ADMIN_TOKEN, "
                "MODEL_ADMIN_TOKEN and ROUTER_FEEDBACK_TOKEN win)\n\n"
                f"  export ROLLOUT_URL={urls['router']} ROLLOUT_TOKEN={tokens['ROUTER_ADMIN_TOKEN']}"
                f" ROUTER_FEEDBACK_TOKEN={tokens['ROUTER_FEEDBACK_TOKEN']}\n"
                "Press Ctrl-C to stop all three.\n",
                flush=True,
            )
        while stop.signal is None and all(p.poll() is None for p in procs.values()):
            time.sleep(0.2)
        if stop.signal is None:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            print(f"error: {', '.join(dead)} exited; stopping the stack", file=sys.stderr)
            return 1
        return 0
    finally:
        for sock in socks.values():
            sock.close()
        if stop.signal is not None:
            print(f"\n{stop.signal}: stopping v1, v2 and the router ...", flush=True)
        _stop_all(procs)
        if stop.signal is not None:
            print("stopped", flush=True)


def main() -> int:
    stop = StopRequest()
    stop.install()
    try:
        return _run(stop)
    except (DevstackError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
