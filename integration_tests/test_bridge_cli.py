"""``boxruntime exec | sessions | status`` end to end, as a user runs them: a spawned local
daemon over stdio, and a remote daemon with a token."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from integration_tests.daemon import ROOT, Daemon, containers_of, daemon_env, start_daemon

pytestmark = pytest.mark.docker

TIMEOUT = 180


def boxruntime(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "boxruntime_cli", *args],
        env=daemon_env(data_dir, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def local(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A local command: the data dir comes from BOXRUNTIME_DATA_DIR, as a user's default would."""
    command, *rest = args
    return boxruntime(data_dir, command, "--backend", "docker", *rest)


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def remote(docker_engine: docker.DockerClient, tmp_path: Path, token: str) -> Iterator[Daemon]:
    proc = start_daemon(tmp_path / "remote-data", "--backend", "docker", token=token)
    try:
        yield proc
    finally:
        proc.stop()
        assert containers_of(proc.data_dir) == []


# ── local spawn ─────────────────────────────────────────────────────────


def test_local_sessions_keep_their_files_between_calls(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    first = local(data_dir, "exec", "--session", "S", "--", "sh", "-c", "echo hi > f")
    assert first.returncode == 0, first.stderr
    second = local(data_dir, "exec", "--session", "S", "--", "cat", "f")
    assert (second.returncode, second.stdout) == (0, "hi\n"), second.stderr
    other = local(data_dir, "exec", "--session", "T", "--", "sh", "-c", "cat f")
    assert other.returncode == 1 and "No such file" in other.stdout + other.stderr  # sessions are separate
    assert containers_of(data_dir) == []  # each spawned daemon removed its sandbox on exit


def test_local_exec_streams_and_exits_with_the_commands_code(
    docker_engine: docker.DockerClient, data_dir: Path
) -> None:
    done = local(data_dir, "exec", "--", "sh", "-c", "echo out; echo err >&2; printf 'é'; exit 7")
    assert done.returncode == 7
    assert done.stdout == "out\né" and done.stderr.endswith("err\n")
    timed_out = local(data_dir, "exec", "--timeout", "1", "--", "sleep", "30")
    assert timed_out.returncode == 124 and "timed out after" in timed_out.stderr
    env = local(data_dir, "exec", "-e", "NAME=box", "--workdir", "/tmp", "--", "sh", "-c", 'echo "$NAME $PWD"')
    assert env.stdout == "box /tmp\n"
    # Without --session each command gets a fresh session, deleted with its files afterwards.
    assert list((data_dir / "workspaces").iterdir()) == []
    assert containers_of(data_dir) == []


def test_local_output_arrives_while_the_command_runs(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    argv = [sys.executable, "-m", "boxruntime_cli", "exec", "--backend", "docker", "--timeout", "100"]
    argv += ["--", "sh", "-c", "echo first; sleep 90; echo never"]
    proc = subprocess.Popen(argv, env=daemon_env(data_dir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"first\n"
        assert proc.poll() is None  # the command is still sleeping: the line was streamed
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the CLI cleans up and stops its daemon
        assert proc.wait(TIMEOUT) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert containers_of(data_dir) == []


def test_local_status_and_sessions(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    status = local(data_dir, "status")
    assert status.returncode == 0, status.stderr
    assert "backend:  docker (available)" in status.stdout
    assert "sessions: 0 active" in status.stdout
    sessions = local(data_dir, "sessions")
    assert sessions.returncode == 0 and "no live sessions" in sessions.stdout


def test_bad_invocations_are_clear(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    nothing = local(data_dir, "exec")
    assert nothing.returncode == 125 and "no command given" in nothing.stderr
    env = local(data_dir, "exec", "-e", "NOEQUALS", "--", "true")
    assert env.returncode == 125 and "--env expects KEY=VALUE" in env.stderr
    profile = local(data_dir, "exec", "--profile", "nope", "--", "true")
    assert profile.returncode == 125 and "unknown box profile 'nope'" in profile.stderr


# ── remote with a token ─────────────────────────────────────────────────


def test_remote_exec_sessions_status_with_a_token(remote: Daemon, data_dir: Path, token: str) -> None:
    where = ["--endpoint", remote.url, f"--token={token}"]  # the = form: a token may start with "-"
    wrote = boxruntime(data_dir, "exec", *where, "--session", "r1", "--", "sh", "-c", "echo remote > g; echo done")
    assert (wrote.returncode, wrote.stdout) == (0, "done\n"), wrote.stderr
    read = boxruntime(data_dir, "exec", *where, "--session", "r1", "--", "cat", "g")
    assert (read.returncode, read.stdout) == (0, "remote\n")
    failed = boxruntime(data_dir, "exec", *where, "--", "sh", "-c", "exit 3")
    assert failed.returncode == 3

    # The token may come from the environment instead; the endpoint may be host:port.
    listed = boxruntime(data_dir, "sessions", "--endpoint", f"127.0.0.1:{remote.port}", BOXRUNTIME_TOKEN=token)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:2] == ["SESSION", "BACKEND"]
    assert [row.split()[0] for row in rows] == ["r1"]  # the one-off session is gone
    as_json = json.loads(boxruntime(data_dir, "sessions", *where, "--json").stdout)
    assert [s["session_id"] for s in as_json] == ["r1"] and as_json[0]["network"] == "off"

    status = boxruntime(data_dir, "status", *where)
    assert status.returncode == 0
    assert f"endpoint: {remote.url}" in status.stdout and "sessions: 1 active" in status.stdout


@pytest.mark.parametrize(
    ("token_args", "message"),
    [
        (["--token", "not-the-token-" + "x" * 30], "refused the token (HTTP 401)"),
        ([], "requires a token and none was given (HTTP 401)"),
    ],
)
def test_remote_auth_failure_is_a_clear_message(
    remote: Daemon, data_dir: Path, token_args: list[str], message: str
) -> None:
    for command in (["exec", "--", "true"], ["sessions"], ["status"]):
        done = boxruntime(data_dir, command[0], "--endpoint", remote.url, *token_args, *command[1:])
        assert done.returncode == 125, done
        assert message in done.stderr and "Traceback" not in done.stderr
        assert done.stdout == ""


def test_unreachable_endpoint_is_a_clear_message(data_dir: Path) -> None:
    done = boxruntime(data_dir, "exec", "--endpoint", "ws://127.0.0.1:9", "--", "true")
    assert done.returncode == 125
    assert "cannot reach the Box daemon at ws://127.0.0.1:9/rpc/ws" in done.stderr and "Traceback" not in done.stderr
