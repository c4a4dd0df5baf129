"""``boxruntime``'s client commands with docker's habits, against real daemons on Docker and
nsjail: the endpoint from the environment, stdin (``-i``), a terminal (``-t``, driven through a
real pseudo-terminal), sessions that outlive the idle reaper, and refusals that say why."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration_tests.daemon import ROOT, Daemon, daemon_env, sandboxes_of, start_daemon

TIMEOUT = 180


@pytest.fixture(params=["docker", "nsjail"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    return str(request.param)


@pytest.fixture
def box(backend: str, data_dir: Path) -> Iterator[Daemon]:
    daemon = start_daemon(data_dir, "--backend", backend)
    try:
        yield daemon
    finally:
        daemon.stop()
        assert sandboxes_of(backend, data_dir) == []


def cli(daemon: Daemon | None, *args: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[bytes]:
    """``boxruntime ARGS`` with the daemon in BOXRUNTIME_ENDPOINT, as a user's shell would have it."""
    extra = {"BOXRUNTIME_ENDPOINT": daemon.url} if daemon is not None else {}
    data_dir = daemon.data_dir if daemon is not None else ROOT / "unused-data"
    return subprocess.run(
        [sys.executable, "-m", "boxruntime_cli", *args],
        env=daemon_env(data_dir, **extra, **env),
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )


# ── stdin, and a terminal ───────────────────────────────────────────────


def test_exec_i_forwards_stdin_and_without_it_the_command_reads_nothing(box: Daemon) -> None:
    data = b"line one\n" + b"x" * 200_000 + b"\nlast line\n"
    empty = cli(box, "exec", "-i", "--", "sh", "-c", "cat; echo done")
    assert (empty.returncode, empty.stdout) == (0, b"done\n"), empty.stderr
    forwarded = cli(box, "exec", "-i", "--", "sh", "-c", "cat; echo done", stdin=data)
    assert forwarded.returncode == 0, forwarded.stderr
    assert forwarded.stdout == data + b"done\n"
    ignored = cli(box, "exec", "--", "sh", "-c", "cat; echo done", stdin=b"not forwarded\n")
    assert (ignored.returncode, ignored.stdout) == (0, b"done\n")  # as docker exec without -i
    status = cli(box, "exec", "-i", "--", "sh", "-c", "read line; exit ${#line}", stdin=b"four\n")
    assert status.returncode == 4


class Terminal:
    """The CLI on the slave side of a real pseudo-terminal; we are the user at its master side."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int, cols: int) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the CLI, its stdin/stdout/stderr on the terminal
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "boxruntime_cli", *argv], env)
        self.resize(rows, cols)
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        # The kernel sends SIGWINCH to the terminal's foreground process group: the CLI.
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read_until(self, marker: bytes, timeout: float = 60) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"no {marker!r} on the terminal within {timeout} s; saw {self.seen!r}")
            try:
                self.seen += os.read(self.fd, 65536)
            except OSError as exc:  # EIO: the CLI exited and closed the terminal
                raise AssertionError(f"the terminal closed before {marker!r}; saw {self.seen!r}") from exc
        found, self.seen = self.seen, b""
        return found

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def test_exec_it_is_an_interactive_shell_on_a_terminal(box: Daemon) -> None:
    env = daemon_env(box.data_dir, BOXRUNTIME_ENDPOINT=box.url, TERM="xterm")
    term = Terminal(["exec", "-it", "-e", "PS1=box$ ", "--", "sh"], env, rows=33, cols=99)
    term.read_until(b"box$ ")
    term.write(b"stty size; tty; echo $TERM\n")
    shown = term.read_until(b"box$ ")
    assert b"33 99" in shown and b"/dev/pts/" in shown and b"xterm" in shown, shown
    term.resize(40, 120)
    # The new size reaches the sandbox's terminal asynchronously: ask until it is there.
    for _ in range(50):
        term.write(b"stty size\n")
        if b"40 120" in term.read_until(b"box$ "):
            break
    else:
        raise AssertionError("the sandbox's terminal never got the new size")
    # Raw mode here: ^C is a byte for the sandbox's terminal, which interrupts the command there.
    term.write(b"sleep 60; echo not-interrupted\n")
    term.read_until(b"sleep 60")
    term.write(b"\x03")
    after = term.read_until(b"box$ ")
    assert b"\nnot-interrupted" not in after  # the echo of the typed line holds "echo not-interrupted"
    term.write(b"exit 7\n")
    assert term.wait() == 7


def test_exec_it_without_a_terminal_on_stdin_is_refused(box: Daemon) -> None:
    done = cli(box, "exec", "-it", "--", "sh", stdin=b"")
    assert done.returncode == 125
    assert b"the input device is not a TTY" in done.stderr


# ── errors in the user's words ──────────────────────────────────────────


def test_a_missing_command_reads_as_the_shell_says_it(box: Daemon) -> None:
    # Not "/bin/sh: 5: /proc/self/fd/3: nosuchcmd: not found": nothing of ours in the message.
    for argv in (["nosuchcmd"], ["sh", "-c", "nosuchcmd"]):
        done = cli(box, "exec", "--", *argv)
        assert (done.returncode, done.stderr) == (127, b"sh: 1: nosuchcmd: not found\n")


def test_refusals_instead_of_clamps_and_substitutions(box: Daemon, backend: str) -> None:
    too_long = cli(box, "exec", "--timeout", "1000", "--", "true")
    assert too_long.returncode == 125
    assert b"--timeout 1000 is above the default profile's limit of 120 s" in too_long.stderr
    assert b"--profile network_extended" not in too_long.stderr  # 300 s is not enough either
    within = cli(box, "exec", "--timeout", "250", "--profile", "network_extended", "--", "true")
    assert within.returncode == 0, within.stderr
    no_session = cli(box, "exec", "--persistent", "--", "true")
    assert no_session.returncode == 125 and b"--persistent keeps a named session" in no_session.stderr
    spawn_only = cli(box, "exec", "--backend", "docker", "--", "true")
    assert spawn_only.returncode == 125 and b"configures a spawned local daemon" in spawn_only.stderr
    image = cli(box, "exec", "--image", "python:3.12-slim", "--", "true")
    if backend == "nsjail":
        assert image.returncode == 125
        assert b"nsjail backend runs the host's own /usr and cannot run image 'python:3.12-slim'" in image.stderr
    else:  # Docker runs images; this one is simply not on this engine
        assert image.returncode == 125 and b"python:3.12-slim" in image.stderr


def test_help_offers_only_backends_that_exist() -> None:
    for command in (["serve"], ["exec"], ["doctor"], ["sessions"]):
        helped = cli(None, *command, "--help")
        assert helped.returncode == 0
        text = helped.stdout.decode()
        assert "{local,docker,gvisor,nsjail,host,e2b}" in text
    chosen = cli(None, "serve", "--backend", "firecracker")
    assert chosen.returncode == 2 and b"invalid choice: 'firecracker'" in chosen.stderr


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({}, b"no E2B API key: set E2B_API_KEY"),
        ({"E2B_API_KEY": "k", "E2B_API_URL": "http://127.0.0.1:9"}, b"cannot reach the E2B API at http://127.0.0.1:9"),
    ],
)
def test_serve_refuses_an_e2b_backend_it_cannot_reach_instead_of_retrying(
    tmp_path: Path, settings: dict[str, str], said: bytes
) -> None:
    env = {k: v for k, v in daemon_env(tmp_path / "data", BOXRUNTIME_BACKEND="e2b").items() if not k.startswith("E2B_")}
    done = subprocess.run(
        [sys.executable, "-m", "boxruntime", "serve", "--port", "0"],
        env={**env, **settings},
        cwd=ROOT,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert b"not starting: the e2b backend is unavailable: " + said in done.stderr
    assert b"Traceback" not in done.stderr


# ── which daemon, and how long sessions live ───────────────────────────


def test_every_client_command_follows_boxruntime_endpoint(box: Daemon) -> None:
    wrote = cli(box, "exec", "--session", "env-s", "--", "sh", "-c", "echo kept > f")
    assert wrote.returncode == 0, wrote.stderr
    listed = cli(box, "sessions", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [s["session_id"] for s in json.loads(listed.stdout)] == ["env-s"]
    status = cli(box, "status")
    assert f"endpoint: {box.url}".encode() in status.stdout
    skills = cli(box, "skill", "list")
    assert skills.returncode == 0, skills.stderr
    # --endpoint wins over the environment; --local ignores it.
    elsewhere = cli(box, "sessions", "--endpoint", "ws://127.0.0.1:9")
    assert elsewhere.returncode == 125 and b"ws://127.0.0.1:9/rpc/ws" in elsewhere.stderr


def test_persistent_sessions_survive_the_idle_reaper(backend: str, data_dir: Path) -> None:
    daemon = start_daemon(data_dir, "--backend", backend, env={"BOXRUNTIME_SESSION_TTL_SEC": "1"})
    try:
        kept = cli(daemon, "exec", "--session", "keep", "--persistent", "--", "sh", "-c", "echo kept > f")
        assert kept.returncode == 0, kept.stderr
        reaped = cli(daemon, "exec", "--session", "idle", "--", "sh", "-c", "echo gone > f")
        assert reaped.returncode == 0, reaped.stderr
        deadline = time.monotonic() + 60
        while True:  # the reaper runs every TTL; poll the daemon's own view until it acted
            sessions = {s["session_id"]: s for s in json.loads(cli(daemon, "sessions", "--json").stdout)}
            if "idle" not in sessions:
                break
            assert time.monotonic() < deadline, f"the idle session was never reaped: {sessions}"
            time.sleep(0.2)
        assert sessions["keep"]["persistent"] is True
        again = cli(daemon, "exec", "--session", "keep", "--persistent", "--", "cat", "f")
        assert (again.returncode, again.stdout) == (0, b"kept\n"), again.stderr
        gone = cli(daemon, "exec", "--session", "idle", "--", "cat", "f")
        assert gone.returncode == 1  # a new session: the reaped one's files went with it
        table = cli(daemon, "sessions").stdout.decode()
        assert "PERSISTENT" in table.splitlines()[0]
    finally:
        daemon.stop()
        assert sandboxes_of(backend, data_dir) == []
