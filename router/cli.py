"""``rollout``: the operator's command line for the router's admin API.

Reads ``ROLLOUT_URL`` (default http://127.0.0.1:8000) and ``ROLLOUT_TOKEN``; ``--url`` and
``--token`` override them. ``--json`` prints the router's JSON to stdout for scripts. Any failure
is one line on stderr and exit code 2; ``watch`` exits 0 when the rollout is promoted, 1 when it
is rolled back or aborted, and 3 when no rollout is running (nothing to watch).

    $ rollout status
    $ rollout start --strategy canary --steps 10,50,100 --interval 30
    $ rollout watch
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import requests

from router.cli_render import (
    one_line,
    render_disagreements,
    render_events,
    render_idle,
    render_releases,
    slot_name,
    render_state,
    render_watch,
    verdict_line,
)

DEFAULT_URL = "http://127.0.0.1:8000"
ACTIVE = ("running", "paused", "awaiting_promotion")
EXIT_OK, EXIT_ROLLED_BACK, EXIT_ERROR, EXIT_NOTHING_TO_WATCH = 0, 1, 2, 3
_NOT_ROUTER = "is ROLLOUT_URL the router's address?"


class CLIError(Exception):
    """A failure to report as one line on stderr (exit code 2)."""


# -- talking to the router -------------------------------------------------------------------------


class AdminClient:
    """The admin API over HTTP; every failure becomes a CLIError that says what to do."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["X-Actor"] = _actor()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        """Close the kept-alive connections to the router."""
        self.session.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             if_match: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else {}
        target = f"{self.url}{path}"
        try:
            resp = self.session.request(method, target, json=body, headers=headers, params=params,
                                        timeout=self.timeout)
        except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
                requests.exceptions.InvalidURL):
            raise CLIError(f"{self.url!r} is not a router URL; set ROLLOUT_URL or --url to "
                           "http(s)://host:port") from None
        except requests.exceptions.Timeout:
            raise CLIError(f"the router at {self.url} did not answer within {self.timeout:g} s; "
                           "check it is up, or raise --timeout") from None
        except requests.exceptions.ConnectionError:
            raise CLIError(f"cannot reach the router at {self.url}: is it running? "
                           "set ROLLOUT_URL or --url to its address") from None
        except requests.RequestException as exc:
            raise CLIError(f"request to {target} failed: {one_line(str(exc))}") from None
        try:
            doc = resp.json()
        except ValueError:
            kind = resp.headers.get("Content-Type", "no content type")
            raise CLIError(f"{method} {target} answered {resp.status_code} with {kind}, not the "
                           f"router's JSON; {_NOT_ROUTER}") from None
        if resp.status_code >= 400:
            raise CLIError(self._explain(resp.status_code, doc, method, target))
        if not isinstance(doc, dict):
            raise CLIError(f"{method} {target} answered JSON that is not an object; {_NOT_ROUTER}")
        return doc

    def _explain(self, status: int, doc: Any, method: str, target: str) -> str:
        error = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(error, dict):
            return f"{method} {target} answered {status}; {_NOT_ROUTER}"
        code, message = error.get("code", "error"), one_line(str(error.get("message", "")))
        hint = ""
        if status == 401 and not self.token:
            hint = "; ROLLOUT_TOKEN is not set: use the router's ROUTER_ADMIN_TOKEN"
        elif status == 401:
            hint = "; check ROLLOUT_TOKEN or --token"
        elif status == 404:
            message, hint = f"{method} {target} answered 404: {message}", f"; {_NOT_ROUTER}"
        elif status == 412:
            current = (error.get("details") or {}).get("config_version")
            hint = f"; see `rollout status`, retry with --if-match {current}" if current else ""
        return f"{message} ({status} {code}){hint}"

    def version_metadata(self, url: str) -> dict[str, Any]:
        """A model service's GET /version, or {"error": ...} when it cannot be read from here."""
        try:
            resp = requests.get(f"{url.rstrip('/')}/version", timeout=min(self.timeout, 3.0))
            doc = resp.json()
        except (requests.RequestException, ValueError):
            return {"error": f"not reachable from here ({url})"}
        if resp.status_code != 200 or not isinstance(doc, dict):
            return {"error": f"GET /version answered {resp.status_code}"}
        return doc


def _actor() -> str:
    try:
        user = re.sub(r"[^A-Za-z0-9@._:-]", "", getpass.getuser())[:40]
    except (KeyError, OSError):
        user = ""
    return f"rollout-cli:{user}" if user else "rollout-cli"


# -- commands --------------------------------------------------------------------------------------

Command = Callable[["AdminClient", argparse.Namespace], int]


def _emit(args: argparse.Namespace, doc: Any, human: Callable[[], str]) -> None:
    print(json.dumps(doc, indent=None if args.command == "watch" else 2) if args.json else human())


def _artifacts(client: AdminClient, state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each role's artifact metadata, from the model service that serves it."""
    upstreams = state.get("upstreams") or {}
    return {str(v): client.version_metadata(upstreams[v])
            for v in (state.get("stable"), state.get("candidate")) if v in upstreams}


def _show_state(client: AdminClient, args: argparse.Namespace, state: dict[str, Any]) -> None:
    """After a change, the view ``status`` prints; ``--json`` prints the router's answer."""
    _emit(args, state, lambda: render_state(state, client.url, _artifacts(client, state)))


def cmd_status(client: AdminClient, args: argparse.Namespace) -> int:
    state = client.call("GET", "/admin/state")
    artifacts = _artifacts(client, state)
    _emit(args, {"state": state, "artifacts": artifacts},
          partial(render_state, state, client.url, artifacts))
    return EXIT_OK


def cmd_set(client: AdminClient, args: argparse.Namespace) -> int:
    fields = {"strategy": args.strategy, "canary_weight": args.weight,
              "shadow_percent": args.shadow_percent, "stable": args.stable}
    body: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if args.candidate is not None:
        body["candidate"] = None if args.candidate.lower() == "none" else args.candidate
    if not body:
        raise CLIError("nothing to set: give --strategy, --weight, --shadow-percent, --stable or "
                       "--candidate")
    if args.reason:
        body["reason"] = args.reason
    state = client.call("PATCH", "/admin/state", body, if_match=args.if_match)
    _show_state(client, args, state)
    return EXIT_OK


def _transition(path: str) -> Command:
    """promote, rollback, pause, resume: a POST with an optional reason."""
    def run(client: AdminClient, args: argparse.Namespace) -> int:
        doc = client.call("POST", path, {"reason": args.reason} if args.reason else None,
                          if_match=args.if_match)
        if "strategy" in doc:
            _show_state(client, args, doc)
        else:  # pause and resume answer with the rollout
            rollout = doc.get("rollout") or {}
            _emit(args, doc, lambda: f"rollout {rollout.get('id')} is {rollout.get('status')} "
                                     f"(config version {doc.get('config_version')})")
        return EXIT_OK

    return run


def load_plan(path: str) -> dict[str, Any]:
    """A plan document from a YAML or JSON file."""
    import yaml  # type: ignore[import-untyped]  # only `start --plan` needs it

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"cannot read plan file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CLIError(f"plan file {path} is not UTF-8 text; save it as UTF-8 YAML or JSON") from None
    kind = "JSON" if path.endswith(".json") else "YAML"
    try:
        doc = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise CLIError(f"plan file {path} is not valid {kind}: {one_line(str(exc))}") from None
    if not isinstance(doc, dict):
        raise CLIError(f"plan file {path} must hold an object (strategy, steps, interval_s, ...)")
    return doc


def plan_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The plan to send: the ``--plan`` file, if any, with the flags given on top."""
    plan = load_plan(args.plan) if args.plan else {}
    flags = {"strategy": args.strategy, "candidate": args.candidate, "version": args.version,
             "interval_s": args.interval,
             "min_requests": args.min_requests, "max_failed_analyses": args.max_failed,
             "shadow_percent": args.shadow_percent}
    plan.update({k: v for k, v in flags.items() if v is not None})
    if args.steps is not None:
        try:
            plan["steps"] = [int(s) for s in args.steps.split(",") if s.strip()]
        except ValueError:
            raise CLIError(f"--steps must be comma-separated percents like 5,25,50,100, "
                           f"got {args.steps!r}") from None
    if args.threshold:
        thresholds = dict(plan.get("thresholds") or {})
        for item in args.threshold:
            key, _, raw = item.partition("=")
            try:
                if not key.strip():
                    raise ValueError(key)
                thresholds[key.strip()] = float(raw)
            except ValueError:
                raise CLIError(f"--threshold must look like max_latency_ratio=1.5, got {item!r}") \
                    from None
        plan["thresholds"] = thresholds
    if args.manual_promotion:
        plan["manual_promotion"] = True
    if getattr(args, "require_evidence", False):
        plan["require_evidence"] = True
    if "strategy" not in plan:
        raise CLIError("give --strategy (canary, blue-green, shadow-then-canary, release-in-place) "
                       "or --plan FILE")
    if args.reason:
        plan["reason"] = args.reason
    return plan


def cmd_simulate(client: AdminClient, args: argparse.Namespace) -> int:
    """Run the plan many times through the real controller and judge on synthetic traffic."""
    from common.errors import Unprocessable
    from router.simulate import Arrivals, Traffic, format_summary, plan_for, simulate

    args.candidate = args.version = args.reason = None
    args.shadow_percent = None
    if not args.plan and not args.strategy:
        args.strategy = "canary"
    try:
        plan = plan_for({k: v for k, v in plan_from_args(args).items() if k != "reason"})
    except Unprocessable as exc:
        raise CLIError(f"the plan is not valid: {exc}") from None
    for name in ("stable_error_rate", "candidate_error_rate", "candidate_agreement"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise CLIError(f"--{name.replace('_', '-')} must be a share from 0 to 1, got {getattr(args, name)}")
    if args.rps <= 0 or args.runs < 1 or args.users < 1 or args.candidate_latency_factor <= 0:
        raise CLIError("--rps, --runs, --users and --candidate-latency-factor must be positive")
    arrivals = None
    if args.replay:
        try:
            arrivals = Arrivals.from_log(Path(args.replay))
        except OSError as exc:
            raise CLIError(f"cannot read {args.replay}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    traffic = Traffic(rps=args.rps, stable_error_rate=args.stable_error_rate,
                      candidate_error_rate=args.candidate_error_rate,
                      candidate_latency_factor=args.candidate_latency_factor,
                      stable_latency_ms=args.stable_latency_ms,
                      candidate_agreement=args.candidate_agreement, users=args.users)
    step = max(1, args.runs // 10)

    def progress(done: int) -> None:
        if done % step == 0 and sys.stderr.isatty():
            print(f"\r{done}/{args.runs} runs", end="", file=sys.stderr, flush=True)

    outcome = simulate(plan, traffic, args.runs, seed=args.seed, arrivals=arrivals,
                       progress=progress)
    if sys.stderr.isatty():
        print("\r" + " " * 30 + "\r", end="", file=sys.stderr)
    summary = outcome.summary()
    if args.json:
        print(json.dumps({"plan": plan.to_dict(), "traffic": traffic.__dict__, **summary}, indent=2))
        return EXIT_OK
    rps = args.rps
    if arrivals is not None:  # the log's own rate
        rps = len(arrivals.times) / max(float(arrivals.times[-1]), 1.0)
    source = (f"replay of {args.replay} ({rps:.3g} req/s)" if arrivals is not None
              else f"{args.rps:g} req/s")
    print(f"{plan.strategy}, steps {','.join(map(str, plan.steps))}, analyses every "
          f"{plan.interval_s:g} s; {source}; errors stable {args.stable_error_rate:g}, candidate "
          f"{args.candidate_error_rate:g}; candidate latency x{args.candidate_latency_factor:g}")
    print("\n".join(format_summary(summary, rps)))
    return EXIT_OK


def cmd_start(client: AdminClient, args: argparse.Namespace) -> int:
    state = client.call("POST", "/admin/rollout", plan_from_args(args), if_match=args.if_match)
    _show_state(client, args, state)
    return EXIT_OK


def cmd_watch(client: AdminClient, args: argparse.Namespace) -> int:
    """Refresh until the rollout ends: 0 when promoted, 1 when rolled back or aborted.

    With no rollout running (or paused, or at the manual gate) there is nothing to follow: one
    line on the last rollout, if any, and exit code 3, told apart from a release's outcome.
    """
    deadline = time.monotonic() + args.give_up_after if args.give_up_after else None
    shown: int | None = None
    while True:
        state = client.call("GET", "/admin/state")
        rollout = state.get("rollout")
        if shown is None and (not rollout or rollout.get("status") not in ACTIVE):
            _emit(args, {"state": state}, partial(render_idle, rollout))
            return EXIT_NOTHING_TO_WATCH
        if not rollout:
            raise CLIError("the rollout is no longer in the router's state; see `rollout events`")
        analysis = client.call("GET", "/admin/analysis")
        decisions = rollout.get("decisions") or []
        if shown is None:
            shown = max(len(decisions) - 1, 0)  # the latest decision, for context
        _emit(args, {"state": state, "analysis": analysis}, partial(render_watch, state, analysis))
        status = rollout.get("status")
        if not args.json:
            for decision in decisions[shown:]:
                print(f"  decision: {verdict_line(decision)}")
            if status == "awaiting_promotion":
                print("  at the manual gate: `rollout resume` promotes, `rollout rollback` aborts")
            if status not in ACTIVE:
                print(f"rollout {rollout.get('id')} {status}; stable is now "
                      f"{slot_name(state, state.get('stable'))}")
        shown = len(decisions)
        sys.stdout.flush()
        if status not in ACTIVE:
            return EXIT_OK if status == "promoted" else EXIT_ROLLED_BACK
        if deadline is not None and time.monotonic() > deadline:
            raise CLIError(f"rollout {rollout.get('id')} is still {status} after "
                           f"{args.give_up_after:g} s")
        time.sleep(args.interval)


def cmd_history(client: AdminClient, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise CLIError(f"--limit must be from 1 to 1000, got {args.limit}")
    doc = client.call("GET", f"/admin/releases?limit={args.limit}")
    _emit(args, doc, lambda: render_releases(doc.get("releases") or []))
    return EXIT_OK


def cmd_events(client: AdminClient, args: argparse.Namespace) -> int:
    doc = client.call("GET", "/admin/events", params={"limit": args.limit, "after": args.after})
    _emit(args, doc, partial(render_events, doc.get("events") or []))
    return EXIT_OK


def cmd_disagreements(client: AdminClient, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.stable is not None or args.candidate is not None:
        if args.stable is None or args.candidate is None:
            raise CLIError("give both --stable and --candidate versions, or neither (the "
                           "versions the roles serve now)")
        params.update(stable=args.stable, candidate=args.candidate)
    doc = client.call("GET", "/admin/disagreements", params=params)
    _emit(args, doc, partial(render_disagreements, doc))
    return EXIT_OK


# -- arguments -------------------------------------------------------------------------------------


def _percent(text: str) -> int:
    if not text.strip().isdigit() or not 0 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer percent from 0 to 100")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _if_match(text: str) -> str:
    tag = text.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise argparse.ArgumentTypeError(f"takes a config version like 7, got {text!r}")
    return tag


def _opt(metavar: str | None, help_text: str, **settings: Any) -> dict[str, Any]:
    return {"help": help_text, **({"metavar": metavar} if metavar else {}), **settings}


Option = tuple[str, dict[str, Any]]
CONNECTION: list[Option] = [
    ("--url", _opt("URL", f"router base URL (default: $ROLLOUT_URL, else {DEFAULT_URL})")),
    ("--token", _opt("TOKEN", "admin token (default: $ROLLOUT_TOKEN)")),
    ("--json", _opt(None, "print the router's JSON to stdout (for scripts)", action="store_true")),
    ("--timeout", _opt("SECONDS", "seconds to wait for each HTTP answer (default: 10)",
                       type=_seconds)),
]
REASON: Option = ("--reason", _opt("TEXT", "why, for the audit log"))
IF_MATCH: Option = ("--if-match", _opt("VERSION", "only if config_version is still VERSION "
                                       "(else 412)", type=_if_match))
COMMANDS: dict[str, tuple[Command, str, list[Option]]] = {
    "status": (cmd_status, "strategy, split, both versions' artifacts, rollout step, last verdict",
               []),
    "set": (cmd_set, "change strategy, canary weight, shadow percent or the roles", [
        ("--strategy", _opt("NAME", "release-in-place, blue-green, canary or shadow")),
        ("--weight", _opt("PERCENT", "canary_weight: percent of requests to the candidate",
                          type=_percent)),
        ("--shadow-percent", _opt("PERCENT", "percent of requests mirrored to the candidate",
                                  type=_percent)),
        ("--stable", _opt("SLOT", "the slot that answers by default")),
        ("--candidate", _opt("SLOT", "the slot under test ('none' clears it)")),
        REASON, IF_MATCH]),
    "promote": (_transition("/admin/promote"), "make the candidate stable (all traffic)",
                [REASON, IF_MATCH]),
    "rollback": (_transition("/admin/rollback"), "all traffic to stable; aborts a running rollout",
                 [REASON, IF_MATCH]),
    "start": (cmd_start, "start an automated rollout from flags or a plan file", [
        ("--plan", _opt("FILE", "YAML or JSON plan; flags override its fields")),
        ("--strategy", _opt("NAME", "canary, blue-green, shadow-then-canary or release-in-place")),
        ("--version", _opt("VERSION", "the packaged version to release: loaded into the idle "
                           "slot (release-in-place: stable's) before the plan runs")),
        ("--candidate", _opt("SLOT", "the slot to release into (default: the idle slot, the "
                             "current candidate)")),
        ("--steps", _opt("PERCENTS", "canary weights in percent, ending at 100, e.g. 5,25,50,100")),
        ("--interval", _opt("SECONDS", "seconds between analyses", type=_seconds)),
        ("--min-requests", _opt("N", "per-version sample size before a verdict", type=int)),
        ("--max-failed", _opt("N", "failed analyses tolerated before rollback", type=int)),
        ("--shadow-percent", _opt("PERCENT", "mirrored percent in the shadow phase",
                                  type=_percent)),
        ("--threshold", _opt("KEY=VALUE", "e.g. max_error_rate_increase=0.01, "
                             "max_latency_ratio=1.5, max_latency_increase_ms=25, "
                             "min_agreement=0.95 (repeatable)", action="append")),
        ("--manual-promotion", _opt(None, "hold before the final promotion until `rollout "
                                    "resume`", action="store_true")),
        ("--require-evidence", _opt(None, "the final promotion waits for evidence that the "
                                    "candidate is within every tolerance", action="store_true")),
        REASON, IF_MATCH]),
    "simulate": (cmd_simulate, "run a plan many times through the controller and judge on "
                               "synthetic traffic (no router needed)", [
        ("--plan", _opt("FILE", "YAML or JSON plan; flags override its fields")),
        ("--strategy", _opt("NAME", "canary (default), blue-green, shadow-then-canary or "
                            "release-in-place")),
        ("--steps", _opt("PERCENTS", "canary weights in percent, ending at 100")),
        ("--interval", _opt("SECONDS", "seconds between analyses", type=_seconds)),
        ("--min-requests", _opt("N", "per-version sample size before a step passes", type=int)),
        ("--max-failed", _opt("N", "failed analyses tolerated before rollback", type=int)),
        ("--threshold", _opt("KEY=VALUE", "a threshold of the plan (repeatable)",
                             action="append")),
        ("--manual-promotion", _opt(None, argparse.SUPPRESS, action="store_true")),
        ("--require-evidence", _opt(None, "the final promotion waits for evidence",
                                    action="store_true")),
        ("--rps", _opt("N", "requests per second (default: 20)", type=float, default=20.0)),
        ("--stable-error-rate", _opt("P", "stable's share of failed requests (default: 0.01)",
                                     type=float, default=0.01)),
        ("--candidate-error-rate", _opt("P", "the candidate's (default: 0.01)", type=float,
                                        default=0.01)),
        ("--candidate-latency-factor", _opt("X", "the candidate's latency as a multiple of "
                                            "stable's (default: 1)", type=float, default=1.0)),
        ("--stable-latency-ms", _opt("MS", "stable's median latency; log-normal, sigma 0.5 "
                                     "(default: 100)", type=float, default=100.0)),
        ("--candidate-agreement", _opt("P", "under shadow, the share of rows both versions "
                                       "agree on (default: 0.99)", type=float, default=0.99)),
        ("--users", _opt("N", "distinct users, each kept on one version (default: 200)",
                         type=int, default=200)),
        ("--runs", _opt("N", "rollouts to simulate (default: 2000)", type=int, default=2000)),
        ("--seed", _opt("N", "random seed (default: 0)", type=int, default=0)),
        ("--replay", _opt("LOG.csv", "take arrival times and users from a locustfile request "
                          "log (--request-log) instead of --rps and --users"))]),
    "pause": (_transition("/admin/rollout/pause"), "hold a running rollout at its current step",
              [REASON]),
    "resume": (_transition("/admin/rollout/resume"),
               "continue a paused rollout, or promote one waiting at the manual gate", [REASON]),
    "watch": (cmd_watch, "follow the running rollout and its live analysis until it ends (exit "
                         "0 promoted, 1 rolled back or aborted, 3 no rollout running)", [
        ("--interval", _opt("SECONDS", "seconds between refreshes (default: 2)", type=_seconds,
                            default=2.0)),
        ("--give-up-after", _opt("SECONDS", "exit 2 if the rollout has not ended by then "
                                 "(default: wait)", type=_seconds))]),
    "history": (cmd_history, "every release: version, slot, strategy, start, end, outcome "
                             "and why, analyses, config versions", [
        ("--limit", _opt("N", "newest N releases (1-1000, default: 20)", type=int, default=20))]),
    "events": (cmd_events, "the audit log: time, actor, change, reason", [
        ("--limit", _opt("N", "newest N events (1-1000, default: 20)", type=int, default=20)),
        ("--after", _opt("ID", "only events after this id", type=int, default=0))]),
    "disagreements": (cmd_disagreements, "where stable's and the candidate's predictions differ "
                                         "on shadow traffic: confusion matrix, differences, the "
                                         "latest disagreeing rows", [
        ("--limit", _opt("N", "newest N disagreeing rows (0-1000, default: 10)", type=int,
                         default=10)),
        ("--stable", _opt("VERSION", "the pair's stable version (default: what stable serves)")),
        ("--candidate", _opt("VERSION", "the pair's candidate version"))]),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``rollout`` argument parser; connection options work before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    for flag, settings in CONNECTION:
        common.add_argument(flag, default=argparse.SUPPRESS, **settings)
    parser = argparse.ArgumentParser(
        prog="rollout", parents=[common],
        description="Operate the model router: inspect, change and roll out versions through its "
                    "admin API.",
        epilog="exit codes: 0 ok (watch: promoted), 1 watch: rolled back or aborted, 2 error, "
               "3 watch: no rollout is running")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, help_text, options) in COMMANDS.items():
        command = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        command.set_defaults(func=func, if_match=None)
        for flag, settings in options:
            command.add_argument(flag, **settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code."""
    args = build_parser().parse_args(argv)
    url = getattr(args, "url", None) or os.environ.get("ROLLOUT_URL") or DEFAULT_URL
    token = getattr(args, "token", None) or os.environ.get("ROLLOUT_TOKEN") or None
    args.json = getattr(args, "json", False)
    client = AdminClient(url, token, getattr(args, "timeout", 10.0))
    try:
        return int(args.func(client, args))
    except CLIError as exc:
        print(f"rollout: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`rollout events | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
