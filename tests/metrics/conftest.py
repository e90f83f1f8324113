"""Two routers sharing one Redis state, in front of the session's v1 and v2 services.

Their third upstream, v3, refuses connections: requests forced to it fail at the router.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.router.rollout.live import Admin, redis_state, shut
from tests.servers import ServerProcess, free_port, router


@dataclass
class Routers:
    a: ServerProcess
    b: ServerProcess

    def admin(self, server: ServerProcess) -> Admin:
        return Admin(server.url)


@pytest.fixture(scope="package")
def routers(
    v1_service: ServerProcess, v2_service: ServerProcess, log_dir: Path
) -> Iterator[Routers]:
    upstreams = {
        "v1": v1_service.url,
        "v2": v2_service.url,
        "v3": f"http://127.0.0.1:{free_port()}",
    }
    with redis_state("metrics") as state_url:
        started = [router(upstreams, log_dir, state_url) for _ in range(2)]
        try:
            for server in started:
                server.wait_ready()
            yield Routers(*started)
        finally:
            for server in started:
                shut(server)
