"""Simulated clients of the router: realistic prediction requests, checked answers, per-version stats.

Each simulated user has a stable ``X-User-ID`` (the canary's sticky key) and sends rows of the
breast cancer data that ships with scikit-learn: mostly one row, sometimes a batch of 2-20. A
response counts as failed when its status is not 200 or its body is not a valid prediction. Each
request is reported under the version that answered it (``X-Model-Version``), as
``predict [v1]`` / ``predict [v2]``, so Locust's tables and CSVs show traffic, failures and latency
per version.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 20 -r 20 -t 60s \\
        --max-fail-ratio 0.01 --max-p95-ms 250

Options added to Locust's command line:

- ``--max-fail-ratio R``, ``--max-p95-ms MS``: release gates; when either is given the process exits
  1 if the run exceeds it and 0 otherwise (without them Locust's own rule applies: any failure
  gives exit code 1).
- ``--request-log PATH``: one CSV row per request (start time, user, version, status, latency,
  outcome), for timelines finer than Locust's per-second history. In distributed mode each
  worker writes ``PATH`` with ``.w<index>`` before the suffix.
- ``--batch-share P``: share of requests that carry a batch rather than one row (default 0.3).
- ``--wait-ready S``: before the users start, wait up to S seconds for the host's ``GET /ready``
  to answer 200 (for a load test started together with the servers; counts against --run-time).
- ``--feedback-share P``: share of answered predictions whose true labels (the data set's) the
  user sends back to ``POST /feedback`` (default 0), ``--feedback-delay S`` seconds later (default
  1: with the user's next request due then), with the bearer token ``--feedback-token`` (default:
  ``$ROUTER_FEEDBACK_TOKEN``). Reported as ``feedback`` in Locust's tables.

The request log's ``correct`` column counts the rows of an answer whose predicted class is the
data set's label (empty for a failed request), so a run's accuracy per version can be read from
it whether or not feedback is sent.
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
import os
import random
import time
from collections import deque
from pathlib import Path
from typing import Any, TextIO

import gevent
import orjson
import requests
from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from sklearn.datasets import load_breast_cancer

log = logging.getLogger(__name__)

_DATA = load_breast_cancer()
ROWS: list[list[float]] = _DATA.data.tolist()
LABELS: list[str] = [str(_DATA.target_names[t]) for t in _DATA.target]
MAX_BATCH = 20
PROBABILITY_TOLERANCE = 1e-6
REQUEST_LOG_COLUMNS = ("start_time", "user", "name", "version", "model_version", "status",
                       "rows", "response_time_ms", "failed", "reason", "correct")
_user_numbers = itertools.count(1)
_request_log: dict[str, Any] = {}


def prediction_problem(doc: Any, rows: int) -> str | None:
    """Why ``doc`` is not a valid answer to a request of ``rows`` rows; None when it is.

    >>> prediction_problem({"predictions": [0], "probabilities": [[0.2, 0.8]], "model_version": "v1"}, 1)
    >>> prediction_problem({"predictions": [0]}, 1)
    'probabilities is not a list of 1 rows'
    """
    if not isinstance(doc, dict):
        return "body is not a JSON object"
    predictions, probabilities = doc.get("predictions"), doc.get("probabilities")
    if not isinstance(predictions, list) or len(predictions) != rows:
        return f"predictions is not a list of {rows} values"
    if not isinstance(probabilities, list) or len(probabilities) != rows:
        return f"probabilities is not a list of {rows} rows"
    for row in probabilities:
        if (not isinstance(row, list) or not row
                or not all(isinstance(p, int | float) and 0 <= p <= 1 for p in row)
                or not math.isclose(sum(row), 1.0, abs_tol=PROBABILITY_TOLERANCE)):
            return f"probability row {row!r} does not sum to 1"
    version = doc.get("model_version")
    if not isinstance(version, str) or not version:
        return "model_version is missing"
    return None


def request_log_path(path: str, runner: Any) -> Path:
    """Where this process writes its request log (workers get their own file)."""
    target = Path(path)
    if isinstance(runner, WorkerRunner):
        target = target.with_name(f"{target.stem}.w{runner.worker_index}{target.suffix}")
    return target


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("model router", "gates and logs of the router's load test")
    group.add_argument("--max-fail-ratio", type=float, default=None, metavar="R",
                       help="exit 1 when failed requests / all requests exceeds R (e.g. 0.01)")
    group.add_argument("--max-p95-ms", type=float, default=None, metavar="MS",
                       help="exit 1 when the 95th percentile response time exceeds MS milliseconds")
    group.add_argument("--request-log", default="", metavar="PATH",
                       help="write one CSV row per request to PATH")
    group.add_argument("--batch-share", type=float, default=0.3, metavar="P",
                       help="share of requests carrying 2-20 rows instead of one (default 0.3)")
    group.add_argument("--wait-ready", type=float, default=0.0, metavar="S",
                       help="wait up to S seconds for the host's GET /ready before starting users")
    group.add_argument("--feedback-share", type=float, default=0.0, metavar="P",
                       help="share of answered predictions whose true labels are sent to "
                            "POST /feedback (default 0)")
    group.add_argument("--feedback-delay", type=float, default=1.0, metavar="S",
                       help="seconds between an answer and its labels (default 1)")
    # on the parser itself: Locust's own add_argument keeps a secret out of its web UI's echo
    parser.add_argument("--feedback-token", default=os.environ.get("ROUTER_FEEDBACK_TOKEN", ""),
                        metavar="TOKEN", is_secret=True,
                        help="bearer token for POST /feedback (default: $ROUTER_FEEDBACK_TOKEN)")


@events.init.add_listener
def _open_request_log(environment: Environment, **_: Any) -> None:
    # gevent's loop clock last ticked before this file's (slow) scikit-learn import; without a
    # refresh, a short --run-time timer counts that import and ends the run at once
    gevent.get_hub().loop.update_now()
    options = environment.parsed_options
    if options is None or not options.request_log or isinstance(environment.runner, MasterRunner):
        return
    path = request_log_path(options.request_log, environment.runner)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle: TextIO = path.open("w", newline="")
    writer = csv.writer(handle)
    writer.writerow(REQUEST_LOG_COLUMNS)
    _request_log.update(handle=handle, writer=writer)


@events.test_start.add_listener
def _wait_until_ready(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or options.wait_ready <= 0 or not environment.host:
        return
    url = environment.host.rstrip("/") + "/ready"
    deadline = time.monotonic() + options.wait_ready
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        gevent.sleep(0.2)
    log.error("%s did not answer 200 within --wait-ready %g s; starting anyway", url, options.wait_ready)


@events.request.add_listener
def _log_request(name: str, response_time: float, start_time: float | None = None,
                 context: dict[str, Any] | None = None, exception: Any = None, **_: Any) -> None:
    writer = _request_log.get("writer")
    if writer is None or not name.startswith("predict"):
        return
    context = context or {}
    writer.writerow((f"{start_time or 0:.6f}", context.get("user", ""), name,
                     context.get("version", ""), context.get("model_version", ""),
                     context.get("status", 0), context.get("rows", 0), f"{response_time:.3f}",
                     int(exception is not None), str(exception or "")[:200],
                     context.get("correct", "")))


@events.quitting.add_listener
def _finish(environment: Environment, **_: Any) -> None:
    """Stop the users, let the CSV writer record final totals, close the log, apply the gates."""
    runner = environment.runner
    options = environment.parsed_options
    if runner is not None and not isinstance(runner, WorkerRunner):
        if runner.state not in ("stopped", "ready"):
            runner.stop()  # a SIGTERM arrives here with users still running
        if options is not None and options.csv_prefix:
            gevent.sleep(1.2)  # Locust's CSV writer runs once a second; let it see the final totals
    handle = _request_log.pop("handle", None)
    _request_log.pop("writer", None)
    if handle is not None:
        handle.close()
    if options is None or isinstance(runner, WorkerRunner):
        return
    verdicts = gate_verdicts(environment, options.max_fail_ratio, options.max_p95_ms)
    if verdicts is None:
        return
    for message in verdicts:
        log.error("gate failed: %s", message)
    environment.process_exit_code = 1 if verdicts else 0


def gate_verdicts(environment: Environment, max_fail_ratio: float | None,
                  max_p95_ms: float | None) -> list[str] | None:
    """The gates this run failed (empty: all passed); None when no gate is configured."""
    if max_fail_ratio is None and max_p95_ms is None:
        return None
    total = environment.stats.total
    failed: list[str] = []
    if max_fail_ratio is not None and total.fail_ratio > max_fail_ratio:
        failed.append(f"failure ratio {total.fail_ratio:.4f} > --max-fail-ratio {max_fail_ratio:g} "
                      f"({total.num_failures} of {total.num_requests} requests)")
    if max_p95_ms is not None and total.num_requests:
        p95 = total.get_response_time_percentile(0.95)
        if p95 > max_p95_ms:
            failed.append(f"p95 {p95:.0f} ms > --max-p95-ms {max_p95_ms:g}")
    return failed


class PredictionClient(FastHttpUser):
    """One client of the prediction API with its own user id, and optionally its labeller."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        runner = self.environment.runner
        number = next(_user_numbers)
        self.user_id = (f"user-w{runner.worker_index}-{number}" if isinstance(runner, WorkerRunner)
                        else f"user-{number}")
        self.rng = random.Random(self.user_id)
        options = self.environment.parsed_options
        self.batch_share = options.batch_share if options is not None else 0.3
        self.feedback_share = options.feedback_share if options is not None else 0.0
        self.feedback_delay = options.feedback_delay if options is not None else 1.0
        token = options.feedback_token if options is not None else ""
        self.feedback_headers = {"Content-Type": "application/json",
                                 **({"Authorization": f"Bearer {token}"} if token else {})}
        self.pending: deque[tuple[float, bytes]] = deque()  # (due, feedback body)

    @task
    def predict(self) -> None:
        self.send_due_feedback()
        rows = 1 if self.rng.random() >= self.batch_share else self.rng.randint(2, MAX_BATCH)
        start = self.rng.randrange(len(ROWS))
        picked = [(start + i) % len(ROWS) for i in range(rows)]
        instances = [ROWS[i] for i in picked]
        with self.client.post("/predict", data=orjson.dumps({"instances": instances}).decode(),
                              headers={"Content-Type": "application/json", "X-User-ID": self.user_id},
                              name="predict", context={"user": self.user_id, "rows": rows},
                              catch_response=True) as resp:
            context = resp.request_meta["context"]
            version = (resp.headers or {}).get("X-Model-Version") or "none"
            context.update(version=version, status=resp.status_code or 0)
            resp.request_meta["name"] = f"predict [{version}]"
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {_error_code(resp)}")
                return
            try:
                doc = orjson.loads(resp.content or b"")
            except orjson.JSONDecodeError:
                resp.failure("body is not JSON")
                return
            if isinstance(doc, dict) and isinstance(doc.get("model_version"), str):
                context["model_version"] = doc["model_version"]
            problem = prediction_problem(doc, rows)
            if problem is not None:
                resp.failure(problem)
                return
            resp.success()
            labels = [LABELS[i] for i in picked]
            context["correct"] = sum(str(p) == t for p, t in zip(doc["predictions"], labels,
                                                                 strict=True))
            request_id = (resp.headers or {}).get("X-Request-ID")
            # drawn only when labelling, so runs without it keep their sequence of requests
            if request_id and self.feedback_share and self.rng.random() < self.feedback_share:
                body = orjson.dumps({"request_id": request_id, "labels": labels})
                self.pending.append((time.monotonic() + self.feedback_delay, body))

    def send_due_feedback(self) -> None:
        """Send the labels whose delay has passed."""
        now = time.monotonic()
        while self.pending and self.pending[0][0] <= now:
            _, body = self.pending.popleft()
            with self.client.post("/feedback", data=body, headers=self.feedback_headers,
                                  name="feedback", catch_response=True) as resp:
                if resp.status_code == 200:
                    resp.success()
                else:
                    resp.failure(f"status {resp.status_code}: {_error_code(resp)}")


def _error_code(resp: Any) -> str:
    """The JSON error code of a failed answer, or the transport error, for Locust's failure table."""
    if getattr(resp, "error", None) is not None and not resp.status_code:
        return type(resp.error).__name__
    try:
        return str(orjson.loads(resp.content or b"")["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "no JSON error body"
