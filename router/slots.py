"""Which version each slot serves: learnt from the slots themselves, never assumed.

The router's upstreams are slots (``blue``, ``green``, or ``v1``, ``v2`` in older
configurations): named model services, each serving one version at a time, which a reload or a new
deploy changes. The router learns each slot's version from its ``GET /version`` at start, after
every reload it makes, every few seconds in the background (so a slot redeployed behind the
router's back is seen), and at once when an answer's ``X-Model-Version`` names a version it did
not expect.

    >>> slots = SlotVersions(pools)           # doctest: +SKIP
    >>> slots.refresh(); slots.get("blue")     # doctest: +SKIP
    'v2'
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

import orjson

from router.upstream import UpstreamError, UpstreamPool

log = logging.getLogger(__name__)
REFRESH_S = 5.0
CHECK_BUDGET_S = 2.0


def access_refused(token_sent: bool) -> str:
    """What a model service's 401 to the router means, for the operator (after the slot's name)."""
    if token_sent:
        return ("refused the router's access token (401): set ROUTER_MODEL_ACCESS_TOKEN to the "
                "model services' MODEL_ACCESS_TOKEN")
    return ("needs an access token (401): set ROUTER_MODEL_ACCESS_TOKEN to the model services' "
            "MODEL_ACCESS_TOKEN")


class SlotVersions:
    """The served version of every slot, as this process last learnt it (None: not known)."""

    def __init__(self, pools: Mapping[str, UpstreamPool],
                 headers: Callable[[], list[tuple[str, str]]] = list,
                 refresh_s: float = REFRESH_S) -> None:
        self.pools = pools
        self.headers = headers
        self.refresh_s = refresh_s
        self._served: dict[str, str | None] = dict.fromkeys(pools)
        self._problems: dict[str, str | None] = dict.fromkeys(pools)
        self._classes: dict[str, tuple[str, list[object] | None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def get(self, slot: str) -> str | None:
        return self._served.get(slot)

    def label(self, slot: str) -> str:
        """The slot's version for metrics and headers; the slot's name while it is not known."""
        return self._served.get(slot) or slot

    def all(self) -> dict[str, str | None]:
        return dict(self._served)

    def classes(self, slot: str, version: str) -> list[object] | None:
        """A classifier's class values as the slot's ``GET /version`` gave them for ``version``
        (None: not a classifier, or not learnt for that version yet)."""
        known = self._classes.get(slot)
        return known[1] if known is not None and known[0] == version else None

    def problem(self, slot: str) -> str | None:
        """Why the slot's last ``GET /version`` gave no version (None: it did)."""
        return self._problems.get(slot)

    def ask(self, slot: str) -> str | None:
        """``GET /version`` of one slot now: its version, or None when it does not say."""
        headers = self.headers()
        problem = None
        version = None
        try:
            resp = self.pools[slot].request("GET", "/version", b"", headers,
                                            time.monotonic() + CHECK_BUDGET_S)
            if resp.status == 401:
                problem = access_refused(any(n.lower() == "authorization" for n, _ in headers))
            elif resp.status != 200:
                problem = f"GET /version answered {resp.status}"
            else:
                metadata = orjson.loads(resp.body)
                version = metadata.get("version")
                classes = metadata.get("classes")
                if isinstance(version, str) and isinstance(classes, list):
                    self._classes[slot] = (version, classes)
        except UpstreamError as exc:
            problem = f"unreachable: {exc}"
        except (orjson.JSONDecodeError, AttributeError):
            pass
        if problem is None and not (isinstance(version, str) and version):
            problem, version = "GET /version did not name a version", None
        self._problems[slot] = problem
        return version

    def refresh(self, slot: str | None = None) -> dict[str, str | None]:
        """Ask one slot (or every slot) which version it serves; a silent slot keeps its last."""
        for name in [slot] if slot is not None else list(self.pools):
            version = self.ask(name)
            if version is not None:
                self._learn(name, version, "GET /version")
        return self.all()

    def observed(self, slot: str, version: str | None) -> None:
        """An answer from ``slot`` said it came from ``version`` (its ``X-Model-Version``)."""
        if version and self._served.get(slot) != version:
            self._learn(slot, version, "X-Model-Version")

    def _learn(self, slot: str, version: str, source: str) -> None:
        with self._lock:
            before = self._served.get(slot)
            if before == version:
                return
            self._served[slot] = version
        if before is not None:
            log.info("slot %s now serves %s (was %s; from its %s)", slot, version, before, source)

    def start(self) -> None:
        """Refresh in the background (once per process; safe after fork)."""
        if self._thread is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="slot-versions", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the refresher and wait for a refresh under way (it may hold a connection)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid() \
                and thread is not threading.current_thread():
            thread.join(CHECK_BUDGET_S * (len(self.pools) + 1))

    def _run(self) -> None:
        self.refresh()
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:  # the refresher must outlive one bad answer
                log.exception("slot version refresh failed")
