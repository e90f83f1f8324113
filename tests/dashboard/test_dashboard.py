"""The dashboard: a self-contained page served by a real router, and used in a real headless browser.

The browser tests drive Debian's chromium with Playwright (never a downloaded browser build).
They skip when chromium or Playwright is missing, except under CI=true, where they fail instead;
``.ci/browser-deps.sh`` installs both.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

import pytest
import requests
from sklearn.datasets import load_breast_cancer

from tests.servers import ROOT, ServerProcess, router

TOKEN = f"dashboard-test-token-{uuid.uuid4().hex}"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = ROOT / "docs" / "dashboard.png"
_ASSET = re.compile(r'(?:src|href)="([^"]+)"')
# A URL with a scheme, or a protocol-relative one in an attribute or url(); an XML namespace is a
# name, not a fetch.
_URL = re.compile(r"""(?<!xmlns=")https?://[^\s"'<>)]+|["'(]//[A-Za-z0-9-]+\.[A-Za-z0-9.-]+""")


@pytest.fixture(scope="module")
def stack(
    v1_service: ServerProcess,
    v2_service: ServerProcess,
    log_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    """A router with a known admin token in front of v1 (stable) and v2 (candidate)."""
    state = tmp_path_factory.mktemp("dashboard") / "state.db"
    upstreams = {"v1": v1_service.url, "v2": v2_service.url}
    with router(upstreams, log_dir, f"sqlite:///{state}", token=TOKEN) as server:
        yield server.wait_ready()


@pytest.fixture
def shadow_stack(
    v1_service: ServerProcess, v2_service: ServerProcess, log_dir: Path, tmp_path: Path
) -> Iterator[ServerProcess]:
    """A router of its own mirroring every request to v2 (the state of ``stack`` stays untouched).

    One worker: with two, the one that did not take the PATCH mirrors nothing until its next
    state refresh, and a test's first requests could go unmirrored.
    """
    upstreams = {"v1": v1_service.url, "v2": v2_service.url}
    with router(upstreams, log_dir, f"sqlite:///{tmp_path / 'state.db'}", token=TOKEN,
                WEB_CONCURRENCY="1") as server:
        server.wait_ready()
        admin(
            server,
            "PATCH",
            "/admin/state",
            {"strategy": "shadow", "candidate": "v2", "shadow_percent": 100},
        )
        yield server


def admin(stack: ServerProcess, method: str, path: str, body: Any = None) -> dict[str, Any]:
    resp = requests.request(
        method,
        stack.url + path,
        json=body,
        timeout=10,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def page_and_assets(url: str) -> dict[str, requests.Response]:
    """The page and every file it references, fetched without any token."""
    page = requests.get(url + "/dashboard", timeout=10)
    found = {"/dashboard": page}
    for ref in _ASSET.findall(page.text):
        found[ref] = requests.get(urljoin(url + "/dashboard", ref), timeout=10)
    return found


# -- plain HTTP -------------------------------------------------------------------------------


def test_page_and_its_files_are_served_without_a_token_and_never_contain_it(
    stack: ServerProcess,
) -> None:
    found = page_and_assets(stack.url)
    page = found["/dashboard"]
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    kinds = {ref.split("?")[0].rsplit(".", 1)[-1]: resp for ref, resp in found.items()}
    assert {"css", "js", "svg"} <= set(kinds), f"page references {sorted(found)}"
    assert kinds["css"].headers["Content-Type"].startswith("text/css")
    assert kinds["js"].headers["Content-Type"].startswith("text/javascript")
    assert kinds["svg"].headers["Content-Type"] == "image/svg+xml"
    for ref, resp in found.items():
        assert resp.status_code == 200, ref
        assert TOKEN not in resp.text and "Bearer " + TOKEN not in resp.text, ref
        assert resp.headers["X-Content-Type-Options"] == "nosniff", ref


def test_nothing_points_to_another_host(stack: ServerProcess) -> None:
    for ref, resp in page_and_assets(stack.url).items():
        assert _URL.findall(resp.text) == [], f"{ref} names another host"


def test_content_security_policy_allows_only_the_router_itself(stack: ServerProcess) -> None:
    for ref, resp in page_and_assets(stack.url).items():
        policy = dict(
            part.strip().split(" ", 1)
            for part in resp.headers["Content-Security-Policy"].split(";")
        )
        assert policy["default-src"] == "'self'", ref
        sources = " ".join(policy.values())
        assert "http" not in sources and "*" not in sources and "unsafe" not in sources, ref


def test_cache_headers_revalidate_the_page_and_keep_pinned_assets(stack: ServerProcess) -> None:
    found = page_and_assets(stack.url)
    page = found["/dashboard"]
    assert page.headers["Cache-Control"] == "no-cache"
    again = requests.get(
        stack.url + "/dashboard", headers={"If-None-Match": page.headers["ETag"]}, timeout=10
    )
    assert again.status_code == 304 and again.content == b""
    pinned = [resp for ref, resp in found.items() if "?v=" in ref]
    assert len(pinned) == len(found) - 1
    for resp in pinned:
        assert "immutable" in resp.headers["Cache-Control"]
    unpinned = requests.get(stack.url + "/dashboard/static/dashboard.js", timeout=10)
    assert unpinned.headers["Cache-Control"] == "no-cache"


def test_an_unknown_file_is_a_json_404(stack: ServerProcess) -> None:
    resp = requests.get(stack.url + "/dashboard/static/secrets.txt", timeout=10)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


# -- a real browser ---------------------------------------------------------------------------


def require_browser() -> None:
    """Skip without chromium or Playwright; under CI=true, fail: CI must run these tests."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} is missing (apt-get install -y chromium chromium-driver)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright is missing (pip install -r requirements-dev.txt)")
    if missing:
        reason = "; ".join(missing) + "; .ci/browser-deps.sh installs both"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true, so the browser tests must run, not skip)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextmanager
def dashboard_tab(browser: Any, url: str) -> Iterator[Any]:
    """A fresh tab on the dashboard; on close, no script error, CSP violation or outside request."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    requested: list[str] = []
    errors: list[str] = []
    tab.on("request", lambda req: requested.append(req.url))
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on(
        "console", lambda msg: errors.append(msg.text) if "Security Policy" in msg.text else None
    )
    tab.goto(url + "/dashboard")
    try:
        yield tab
    finally:
        context.close()
    assert errors == [], "script errors or Content-Security-Policy violations in the page"
    own = urlsplit(url).netloc
    assert [u for u in requested if urlsplit(u).netloc != own] == [], "requests to another host"


@pytest.fixture
def page(browser: Any, stack: ServerProcess) -> Iterator[Any]:
    with dashboard_tab(browser, stack.url) as tab:
        yield tab


def connect(page: Any, token: str) -> None:
    page.fill("#token", token)
    page.click("#token-form button[type=submit]")


def test_without_a_token_the_page_says_one_is_needed(page: Any, tmp_path: Path) -> None:
    notice = page.locator("#notice")
    notice.wait_for(state="visible")
    assert "admin token is needed" in notice.inner_text()
    assert page.inner_text("#connection") == "not connected"
    assert page.is_disabled("[data-action=promote]")
    page.screenshot(path=str(tmp_path / "dashboard-no-token.png"), full_page=True)


def test_a_wrong_token_shows_the_401_message(page: Any, tmp_path: Path) -> None:
    connect(page, "not-the-token")
    page.wait_for_selector("#connection[data-status=error]")
    message = page.inner_text("#notice")
    assert "401" in message and "wrong admin token" in message
    assert page.evaluate("sessionStorage.length") == 0
    page.screenshot(path=str(tmp_path / "dashboard-wrong-token.png"), full_page=True)


class Traffic:
    """Predictions posted through the router from a background thread, bounded in count."""

    def __init__(self, url: str, limit: int = 20_000) -> None:
        rows = load_breast_cancer().data[:50].tolist()
        self.bodies = [json.dumps({"instances": [row]}) for row in rows]
        self.url, self.limit = url + "/predict", limit
        self.answered: dict[str, int] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            for i in range(self.limit):
                if self.stopped.is_set():
                    return
                resp = session.post(
                    self.url,
                    data=self.bodies[i % len(self.bodies)],
                    timeout=10,
                    headers={"Content-Type": "application/json", "X-User-ID": f"user-{i}"},
                )
                version = resp.headers.get("X-Model-Version", "none")
                self.answered[version] = self.answered.get(version, 0) + 1

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(30)


RATES_OF_BOTH = """() => {
  const chart = document.querySelector('.chart[data-metric=rate]');
  const latest = JSON.parse(chart.dataset.latest || '{}');
  return Number(chart.dataset.points) >= 2 && latest.v1 > 0 && latest.v2 > 0;
}"""

PIXELS_OF = """([metric, color]) => {
  const canvas = document.querySelector(`.chart[data-metric=${metric}] canvas`);
  const rgb = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    if (rgb.every((c, k) => Math.abs(pixels[i + k] - c) < 8)) count += 1;
  }
  return count;
}"""


def test_live_charts_rollout_evidence_and_rollback(
    page: Any, stack: ServerProcess, tmp_path: Path
) -> None:
    plan = {
        "strategy": "canary",
        "candidate": "v2",
        "steps": [30, 50, 100],
        "interval_s": 1,
        "min_requests": 5,
        "manual_promotion": True,
        "thresholds": {"max_error_rate_increase": 0.5, "max_p99_ratio": 1000},
    }
    admin(stack, "POST", "/admin/rollout", plan)
    connect(page, TOKEN)
    with Traffic(stack.url) as traffic:
        page.wait_for_function(RATES_OF_BOTH)
        page.wait_for_function(
            "() => Number(document.querySelector('.chart[data-metric=p99]').dataset.points) >= 2"
        )
        page.wait_for_selector("#decisions .checks li")
        page.wait_for_selector("#rollout-status:text('awaiting promotion')")
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("UPDATE_SCREENSHOT") == "1":  # refresh the picture in docs/ on request
            SCREENSHOT.write_bytes(shot.read_bytes())

        for metric in ("rate", "p99"):
            latest = json.loads(page.get_attribute(f".chart[data-metric={metric}]", "data-latest"))
            assert latest["v1"] > 0 and latest["v2"] > 0, (metric, latest)
        # v1 answers about 70 % and v2 30 %: two distinct lines, each in its version's colour. (Latency
        # lines may lie on top of each other, so only the rate chart is checked pixel by pixel.)
        blue, orange = (page.evaluate(PIXELS_OF, ["rate", c]) for c in ("#2563eb", "#ea580c"))
        assert blue > 0 and orange > 0, f"rate chart pixels: v1 {blue}, v2 {orange}"
        decisions = page.inner_text("#decisions")
        assert (
            "advance" in decisions
            and "error_rate_increase" in decisions
            and "samples:" in decisions
        )
        assert page.inner_text("#strategy") == "canary"
        assert page.is_enabled("[data-action='rollout/resume']")

        before = admin(stack, "GET", "/admin/state")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("[data-action=rollback]")
        page.wait_for_selector("#action-result:has-text('config version')")
        after = admin(stack, "GET", "/admin/state")
        assert after["config_version"] > before["config_version"]
        assert after["canary_weight"] == 0 and after["weights"] == {"v1": 100, "v2": 0}
        assert after["rollout"]["status"] == "aborted"
        page.wait_for_selector(f"#config-version[data-config-version='{after['config_version']}']")
        page.wait_for_selector("#rollout-status:text('aborted')")
        page.screenshot(path=str(tmp_path / "dashboard-after-rollback.png"), full_page=True)
    assert traffic.answered.get("v1") and traffic.answered.get("v2"), traffic.answered


def test_shadow_agreement_is_charted(browser: Any, shadow_stack: ServerProcess) -> None:
    with dashboard_tab(browser, shadow_stack.url) as tab, Traffic(shadow_stack.url) as traffic:
        connect(tab, TOKEN)
        tab.wait_for_function(
            "() => Number(document.querySelector('.chart[data-metric=agreement]')"
            ".dataset.points) >= 2"
        )
        latest = json.loads(tab.get_attribute(".chart[data-metric=agreement]", "data-latest"))
        assert set(latest) == {"v2"} and 0 <= latest["v2"] <= 1
        assert tab.inner_text("#shadow") == "100 % to v2"
        assert tab.inner_text("#agreement").endswith("%")
        assert tab.inner_text("#versions tr[data-version=v2] td:last-child").endswith("%")
    assert set(traffic.answered) == {"v1"}, "in shadow mode stable answers every request"


# -- input drift --------------------------------------------------------------------------------


def test_admin_drift_lists_each_slots_top_columns(stack: ServerProcess) -> None:
    rows = load_breast_cancer().data[:20].tolist()
    for _ in range(3):
        resp = requests.post(stack.url + "/predict", json={"instances": rows}, timeout=10,
                             headers={"X-Route-To": "v2"})
        assert resp.status_code == 200
    drift = admin(stack, "GET", "/admin/drift?top=3")
    assert drift["top"] == 3 and set(drift["slots"]) == {"v1", "v2"}
    v2 = drift["slots"]["v2"]
    assert v2["available"] is True and v2["version"] == "v2" and v2["role"] == "candidate"
    assert len(v2["columns"]) == 3 and v2["window_rows"] >= 20
    assert {"name", "psi", "reading"} == set(v2["columns"][0])
    assert drift["slots"]["v1"]["role"] == "stable"
    bad = requests.get(stack.url + "/admin/drift?top=zero", timeout=10,
                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("top must be")
    assert requests.get(stack.url + "/admin/drift", timeout=10).status_code == 401


def test_the_drift_panel_lists_columns_per_slot(page: Any, stack: ServerProcess) -> None:
    rows = load_breast_cancer().data[:60].tolist()
    resp = requests.post(stack.url + "/predict", json={"instances": rows}, timeout=10,
                         headers={"X-Route-To": "v2"})
    assert resp.status_code == 200
    connect(page, TOKEN)
    page.wait_for_selector("#drift-slots .drift-slot[data-slot=v2] li[data-column]")
    expected = admin(stack, "GET", "/admin/drift")["slots"]["v2"]["columns"]
    shown = page.eval_on_selector_all(
        "#drift-slots .drift-slot[data-slot=v2] li[data-column]",
        "(items) => items.map((li) => li.dataset.column)")
    # the page and this read may see windows a flush apart, where near-equal PSIs swap places
    assert len(shown) == len(expected) and set(shown) <= set(load_breast_cancer().feature_names)
    assert "v2" in page.inner_text("#drift-slots .drift-slot[data-slot=v2] h3")


def disagreeing_rows(v1: ServerProcess, v2: ServerProcess) -> list[list[float]]:
    """Breast-cancer rows on which v1 and v2 predict different classes, asked of both directly."""
    rows = load_breast_cancer().data.tolist()
    predictions = [requests.post(s.url + "/predict", json={"instances": rows}, timeout=30)
                   .json()["predictions"] for s in (v1, v2)]
    return [row for row, a, b in zip(rows, *predictions, strict=True) if a != b]


def test_disagreements_panel_shows_the_matrix_and_the_latest_rows(
    browser: Any, shadow_stack: ServerProcess, v1_service: ServerProcess,
    v2_service: ServerProcess,
) -> None:
    rows = disagreeing_rows(v1_service, v2_service)[:3]
    assert rows, "v1 and v2 should disagree on a few breast-cancer rows"
    for n, row in enumerate(rows):
        resp = requests.post(shadow_stack.url + "/predict", json={"instances": [row]},
                             headers={"X-Request-ID": f"panel-{n}"}, timeout=10)
        assert resp.status_code == 200
    with dashboard_tab(browser, shadow_stack.url) as tab:
        connect(tab, TOKEN)
        tab.wait_for_function(
            f"() => document.querySelectorAll('#disagreement-samples tr[data-request-id^=panel-]')"
            f".length === {len(rows)}"
        )
        doc = admin(shadow_stack, "GET", "/admin/disagreements?limit=10")
        ids = [tab.get_attribute(tr, "data-request-id") for tr in
               ("#disagreement-samples tr:nth-child(1)", "#disagreement-samples tr:nth-child(2)")]
        assert ids == [s["request_id"] for s in doc["samples"][:2]]
        classes = doc["confusion_matrix"]["classes"]
        for i, stable_class in enumerate(classes):
            for j, candidate_class in enumerate(classes):
                cell = tab.inner_text(f"#confusion tr[data-class={stable_class}] "
                                      f"td[data-candidate={candidate_class}]")
                assert int(cell) == doc["confusion_matrix"]["counts"][i][j]
        assert f"{doc['rows']} rows compared" in tab.inner_text("#disagreement-summary")
        assert tab.inner_text("#disagreement-pair") == "v1 (stable) vs v2 (candidate)"
        assert tab.locator("#differences tr").count() >= 1
