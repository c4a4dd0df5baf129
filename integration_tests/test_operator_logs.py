"""What an operator reads in the daemon's log: one line per failed request, no access-log noise,
JSON on request, a closing line, and never a token (real daemons, real clients)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from boxruntime.errors import BoxSessionNotFoundError, BoxValidationError
from integration_tests.daemon import ROOT, Daemon, connect, daemon_env, start_daemon

pytestmark = pytest.mark.anyio


def log_lines(daemon: Daemon) -> list[str]:
    return daemon.log().splitlines()


async def test_a_failed_request_is_one_readable_line_and_access_logs_are_off(data_dir: Path) -> None:
    daemon = start_daemon(data_dir, "--backend", "nsjail")
    try:
        async with connect(daemon) as peer:
            with pytest.raises(BoxSessionNotFoundError):
                await peer.call("box_get_session", {"session_id": "no-such-session"})
            with pytest.raises(BoxValidationError):
                await peer.call("box_exec", {"session_id": "bad-spec", "cmd": "true", "timeout_sec": "soon"})
            await peer.call("box_status", {})  # a success adds no line of its own
        assert daemon.stop() == 0
        lines = log_lines(daemon)
        missing = [line for line in lines if "no-such-session" in line]
        assert len(missing) == 1, lines
        assert "WARNING boxruntime.requests: box_get_session failed: session=no-such-session" in missing[0]
        assert "error=BoxSessionNotFoundError duration_ms=" in missing[0]
        invalid = [line for line in lines if "bad-spec" in line]
        assert len(invalid) == 1, lines
        assert "box_exec failed: session=bad-spec error=BoxValidationError" in invalid[0]
        assert "timeout_sec" in invalid[0] and "soon" not in invalid[0]  # the refused value is not echoed
        assert not [line for line in lines if "aiohttp.access" in line], lines
        assert "boxruntime stopped after" in lines[-1]
    finally:
        daemon.stop()


async def test_json_logs_are_one_object_per_line(data_dir: Path) -> None:
    daemon = start_daemon(data_dir, "--backend", "nsjail", "--log-format", "json")
    try:
        async with connect(daemon) as peer:
            with pytest.raises(BoxSessionNotFoundError):
                await peer.call("box_delete_session", {"session_id": "absent"})
        assert daemon.stop() == 0
        entries = [json.loads(line) for line in log_lines(daemon)]  # every line parses
        failed = [e for e in entries if e.get("action") == "box_delete_session"]
        assert len(failed) == 1, entries
        assert failed[0]["session"] == "absent" and failed[0]["error"] == "BoxSessionNotFoundError"
        assert failed[0]["level"] == "warning" and failed[0]["logger"] == "boxruntime.requests"
        assert isinstance(failed[0]["duration_ms"], int | float)
        assert "boxruntime stopped after" in entries[-1]["message"]
    finally:
        daemon.stop()


async def test_the_access_log_comes_back_on_request(data_dir: Path) -> None:
    daemon = start_daemon(data_dir, "--backend", "nsjail", "--access-log")
    try:
        async with connect(daemon) as peer:
            await peer.call("box_status", {})
    finally:
        daemon.stop()
    assert [line for line in log_lines(daemon) if "aiohttp.access" in line and "/rpc/ws" in line]


def test_a_bad_token_never_reaches_a_log_line(data_dir: Path, tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    daemon = start_daemon(data_dir, "--backend", "nsjail", token=token)
    wrong = "wrong-" + secrets.token_urlsafe(32)
    try:
        refused = subprocess.run(
            [sys.executable, "-m", "boxruntime_cli", "sessions", "--endpoint", daemon.url, f"--token={wrong}"],
            env=daemon_env(tmp_path / "client"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert refused.returncode == 125 and "refused the token" in refused.stderr
        assert wrong not in refused.stderr + refused.stdout
    finally:
        daemon.stop()
    log = daemon.log()
    assert "bad or missing token" in log
    assert wrong not in log and token not in log


@pytest.mark.parametrize(
    "env",
    [
        {"BOXRUNTIME_TOKEN": "short-secret-value"},
        {"LANGBOT_BOX_CONTROL_TOKEN": "short-secret-value"},
        {"BOXRUNTIME_TOKEN": "a secret with spaces that is long enough to pass"},
    ],
)
def test_a_token_the_daemon_refuses_is_not_echoed(tmp_path: Path, env: dict[str, str]) -> None:
    secret = next(iter(env.values()))
    done = subprocess.run(
        [sys.executable, "-m", "boxruntime", "serve", "--backend", "nsjail", "--port", "0"],
        env=daemon_env(tmp_path / "data", **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "invalid settings: token: " in done.stderr and "at least 32 characters" in done.stderr
    assert secret not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr and "input_value" not in done.stderr
