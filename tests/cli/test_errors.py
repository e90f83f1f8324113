"""Every failure is one line on stderr and exit code 2: no traceback, a hint at what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.cli import COMMANDS, build_parser, main
from tests.cli.conftest import Result, Runner, cli_runner, start_router
from tests.servers import ServerProcess, free_port


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.code == 2
    assert result.out == ""
    assert "Traceback" not in result.err
    assert result.err.count("\n") == 1 and result.err.startswith("rollout: error: ")
    for fragment in fragments:
        assert fragment in result.err


def test_unreachable_router(read_only: Runner) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert_one_line_error(read_only("status", "--url", url), "cannot reach the router", url)


def test_url_of_a_model_service_instead_of_the_router(read_only: Runner,
                                                      v1_service: ServerProcess) -> None:
    assert_one_line_error(read_only("--url", v1_service.url, "status"), "404", "ROLLOUT_URL")


def test_url_that_is_not_a_url(read_only: Runner) -> None:
    assert_one_line_error(read_only("status", "--url", "localhost-8000"), "not a router URL")


def test_wrong_token(read_only: Runner) -> None:
    assert_one_line_error(read_only("status", "--token", "wrong"), "401", "check ROLLOUT_TOKEN")


def test_missing_token(read_only: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROLLOUT_TOKEN")
    assert_one_line_error(read_only("events"), "401", "ROLLOUT_TOKEN is not set")


def test_admin_api_disabled(v1_service: ServerProcess, v2_service: ServerProcess, log_dir: Path,
                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    with start_router(v1_service, v2_service, log_dir, tmp_path / "s.db", token=None) as server:
        server.wait_ready()
        result = cli_runner(server.url, monkeypatch, capsys)("status")
    assert_one_line_error(result, "503", "set ROUTER_ADMIN_TOKEN")


def test_invalid_plan_gives_the_servers_422_message(read_only: Runner) -> None:
    result = read_only("start", "--strategy", "canary", "--steps", "50,20")
    assert_one_line_error(result, "422", '"steps" must be increasing')


def test_unknown_threshold_is_refused_by_the_server(read_only: Runner) -> None:
    result = read_only("start", "--strategy", "canary", "--threshold", "max_latency=3")
    assert_one_line_error(result, "422", "unknown threshold")


def test_conflict(read_only: Runner) -> None:
    assert_one_line_error(read_only("pause"), "409", "cannot pause")


def test_stale_if_match(read_only: Runner) -> None:
    result = read_only("set", "--weight", "10", "--strategy", "canary", "--if-match", "999")
    assert_one_line_error(result, "412", "retry with --if-match 1")


@pytest.mark.parametrize("content, message", [
    (None, "cannot read plan file"),
    ("strategy: [canary\n", "not valid YAML"),
    ("- canary\n", "must hold an object"),
    (b"\xff\xfe\x00s", "not UTF-8 text"),
])
def test_bad_plan_file(read_only: Runner, tmp_path: Path, content: str | bytes | None,
                       message: str) -> None:
    path = tmp_path / "plan.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert_one_line_error(read_only("start", "--plan", str(path)), message)


@pytest.mark.parametrize("argv, message", [
    (["start", "--interval", "30"], "give --strategy"),
    (["start", "--strategy", "canary", "--steps", "5,x,100"], "--steps must be"),
    (["start", "--strategy", "canary", "--threshold", "max_p99_ratio"], "--threshold must look"),
    (["start", "--strategy", "canary", "--threshold", "=2"], "--threshold must look"),
])
def test_bad_flags_are_caught_before_any_request(argv: list[str], message: str,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    result = cli_runner(f"http://127.0.0.1:{free_port()}", monkeypatch, capsys)(*argv)
    assert_one_line_error(result, message)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_on_every_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])

    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rollout {command}")
    assert "--json" in out and "--url" in out and "--token" in out


def test_top_level_help_lists_every_command() -> None:
    text = build_parser().format_help()
    for command in ("status", "set", "promote", "rollback", "start", "pause", "resume", "watch",
                    "events"):
        assert f"    {command} " in text
