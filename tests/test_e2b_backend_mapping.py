"""The e2b backend's mappings, without a server: BoxSpec → E2B's create arguments, the session's
paths in an E2B sandbox, a Command → envd's StartRequest, envd's end → the contract's exit, and
the SDK's errors → errno names and typed errors."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.exceptions import (
    AuthenticationException,
    FileNotFoundException,
    InvalidArgumentException,
    NotEnoughSpaceException,
    SandboxException,
    SandboxNotRunningException,
    TimeoutException,
)

from boxruntime.backends.contract import Command, SandboxFileError, TerminalSize
from boxruntime.backends.e2b import mapping
from boxruntime.backends.e2b.command_request import start_error, start_request
from boxruntime.backends.e2b.errors import SandboxGone, errno_of, sandbox_error
from boxruntime.backends.e2b.paths import SandboxPaths, real_mount_path
from boxruntime.backends.e2b.process import exit_of
from boxruntime.config import Settings, apply_box_config, load_settings
from boxruntime.errors import BoxSandboxError, BoxValidationError
from boxruntime.models import LANGBOT_DEFAULT_IMAGE, BoxSpec

# ── the spec ─────────────────────────────────────────────────────────────


def settings(**values: object) -> Settings:
    return Settings.model_validate({"data_dir": Path("/tmp/boxruntime-test"), **values})


def test_images_map_to_templates() -> None:
    plain = settings()
    assert mapping.template_for(BoxSpec(session_id="s"), plain) == "base"  # LangBot's default image
    assert mapping.template_for(BoxSpec(session_id="s", image=plain.default_image), plain) == "base"
    assert mapping.template_for(BoxSpec(session_id="s", image="my-template"), plain) == "my-template"
    chosen = settings(e2b_template="team-base")
    assert mapping.template_for(BoxSpec(session_id="s", image=LANGBOT_DEFAULT_IMAGE), chosen) == "team-base"


def test_connection_settings_go_to_the_sdk_as_given_and_only_when_set() -> None:
    assert mapping.api_params(settings()) == {"request_timeout": mapping.REQUEST_TIMEOUT_SEC}
    given = settings(
        e2b_api_key="k", e2b_api_url="http://api:1", e2b_sandbox_url="http://envd:2", e2b_domain="example.org"
    )
    assert mapping.api_params(given, 5.0) == {
        "request_timeout": 5.0,
        "api_key": "k",
        "api_url": "http://api:1",
        "sandbox_url": "http://envd:2",
        "domain": "example.org",
    }
    assert mapping.where(given) == "http://api:1"
    assert mapping.where(settings(e2b_domain="example.org")) == "https://api.example.org"


def test_network_and_what_is_not_enforced() -> None:
    spec = BoxSpec(session_id="s", cpus=2, memory_mb=256, pids_limit=64, workspace_quota_mb=10)
    assert mapping.internet(spec) is False and mapping.internet(BoxSpec(session_id="s", network="on")) is True
    notes = " ".join(mapping.unenforced_notes(spec))
    assert "cpus=2, memory_mb=256, pids_limit=64 are not enforced" in notes
    assert "read_only_rootfs is not enforced" in notes and "workspace_quota_mb=10 is not enforced" in notes
    limits = mapping.enforced_limits(settings())
    assert limits["network"].startswith("enforced")
    assert all(limits[name].startswith("not enforced") for name in ("cpus", "memory_mb", "pids_limit"))


def test_metadata_names_this_site_without_its_path(tmp_path: Path) -> None:
    meta = mapping.metadata(settings(data_dir=tmp_path), "inst", "key")
    assert meta[mapping.META_INSTANCE] == "inst" and meta[mapping.META_SESSION] == "key"
    assert str(tmp_path) not in meta[mapping.META_SITE] and len(meta[mapping.META_SITE]) == 24
    assert mapping.site_id(tmp_path) != mapping.site_id(tmp_path / "other")


def test_e2b_settings_from_the_environment_and_box_init(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "E2B_API_KEY": "k",
        "E2B_API_URL": "http://api",
        "E2B_SANDBOX_URL": "http://envd",
        "E2B_DOMAIN": "example.org",
        "BOXRUNTIME_E2B_TEMPLATE": "tpl",
        "BOXRUNTIME_E2B_TIMEOUT_SEC": "600",
    }.items():
        monkeypatch.setenv(name, value)
    loaded = load_settings()
    assert (loaded.e2b_api_key, loaded.e2b_api_url, loaded.e2b_sandbox_url) == ("k", "http://api", "http://envd")
    assert (loaded.e2b_domain, loaded.e2b_template, loaded.e2b_timeout_sec) == ("example.org", "tpl", 600)
    apply_box_config(loaded, {"e2b": {"sandbox_url": "http://other", "timeout_sec": 900}})
    assert (loaded.e2b_sandbox_url, loaded.e2b_timeout_sec) == ("http://other", 900)
    with pytest.raises(BoxValidationError, match="e2b_timeout_sec"):
        apply_box_config(loaded, {"e2b": {"timeout_sec": 30}})  # renewed every minute: at least 120 s
    assert loaded.e2b_timeout_sec == 900


# ── paths ────────────────────────────────────────────────────────────────


def test_mount_paths_live_under_the_users_home() -> None:
    assert real_mount_path("/workspace") == "/home/user/workspace"
    assert real_mount_path("/opt/site/") == "/home/user/opt/site"
    assert real_mount_path("/home/user/project") == "/home/user/project"
    assert real_mount_path("/tmp/scratch") == "/tmp/scratch"
    with pytest.raises(BoxValidationError, match="mount_path / cannot be used on the e2b backend"):
        real_mount_path("/")


def test_paths_are_translated_both_ways_at_path_boundaries() -> None:
    paths = SandboxPaths.build("/workspace", ["/workspace/.skills/x", "/opt/site"])
    assert paths.workspace == "/home/user/workspace"
    assert paths.real("/workspace/a/../b") == "/home/user/workspace/b"
    assert paths.real("/opt/site/mod.py") == "/home/user/opt/site/mod.py"
    assert paths.real("/tmp/x") == "/tmp/x" and paths.real("/etc/passwd") == "/etc/passwd"
    assert paths.logical("/home/user/workspace/b") == "/workspace/b"
    script = "cd /workspace && cat /workspace/f /home/u/workspace x/workspace /workspaces PYTHONPATH=/opt/site"
    assert paths.rewrite(script) == (
        "cd /home/user/workspace && cat /home/user/workspace/f /home/u/workspace x/workspace /workspaces "
        "PYTHONPATH=/home/user/opt/site"
    )
    assert paths.rewrite(paths.rewrite("/workspace")) == "/home/user/workspace"  # idempotent
    assert paths.logical_text("open /home/user/workspace/f: no such file") == "open /workspace/f: no such file"


def test_file_paths_stay_under_their_roots() -> None:
    paths = SandboxPaths.build("/workspace")
    assert paths.confined("/workspace/a", ["/workspace", "/tmp"]) == "/home/user/workspace/a"
    for outside in ("/etc/passwd", "/workspace/../etc/passwd", "/workspacex/a"):
        with pytest.raises(SandboxFileError) as refused:
            paths.confined(outside, ["/workspace", "/tmp"])
        assert refused.value.code == "EACCES"
    with pytest.raises(SandboxFileError) as relative:
        paths.confined("a/b", ["/"])
    assert relative.value.code == "EINVAL"


# ── commands ─────────────────────────────────────────────────────────────


def test_a_script_runs_under_sh_with_paths_and_env_translated() -> None:
    paths = SandboxPaths.build("/workspace", ["/opt/site"])
    command = Command(cwd="/workspace/sub", script="ls /workspace", env={"PYTHONPATH": "/opt/site"}, stdin=True)
    request = start_request(command, paths)
    assert request.process is not None
    assert (request.process.cmd, list(request.process.args)) == ("/bin/sh", ["-c", "ls /home/user/workspace"])
    assert request.process.cwd == "/home/user/workspace/sub"
    assert dict(request.process.envs) == {
        "LANG": "C.UTF-8",
        "LANGBOT_BOX_WORKSPACE": "/home/user/workspace",
        "PYTHONPATH": "/home/user/opt/site",
    }
    assert request.stdin is True and request.pty is None


def test_argv_runs_as_given_and_a_terminal_gets_its_size() -> None:
    paths = SandboxPaths.build("/workspace")
    terminal = Command(cwd="/workspace", argv=["python3", "/workspace/x.py"], terminal=TerminalSize(rows=31, cols=97))
    request = start_request(terminal, paths)
    assert request.process is not None and request.pty is not None and request.pty.size is not None
    assert (request.process.cmd, list(request.process.args)) == ("python3", ["/home/user/workspace/x.py"])
    assert (request.pty.size.rows, request.pty.size.cols) == (31, 97)
    assert request.process.envs["TERM"] == "xterm-256color" and request.stdin is True
    with pytest.raises(BoxValidationError):
        start_request(Command(cwd="/"), paths)


def test_a_refused_start_is_the_requests_fault_unless_the_sandbox_failed() -> None:
    paths = SandboxPaths.build("/workspace")
    command = Command(cwd="/workspace/gone", argv=["nope"])
    refused = start_error(
        ConnectError(Code.INVALID_ARGUMENT, "cwd '/home/user/workspace/gone' does not exist"), command, paths
    )
    assert type(refused) is BoxValidationError and "cwd '/workspace/gone' does not exist" in str(refused)
    broken = start_error(ConnectError(Code.UNAVAILABLE, "connection reset"), command, paths)
    assert type(broken) is BoxSandboxError


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        ({"exited": True, "exit_code": 0, "status": "exit status 0"}, (0, None, "exit")),
        ({"exited": True, "exit_code": 3, "status": "exit status 3"}, (3, None, "exit")),
        ({"exited": False, "exit_code": -1, "status": "signal: killed"}, (137, signal.SIGKILL, "signal")),
        ({"exited": False, "exit_code": -1, "status": "signal: terminated"}, (143, signal.SIGTERM, "signal")),
        ({"exited": False, "exit_code": -1, "status": "signal: no such signal"}, (None, None, "signal")),
    ],
)
def test_envds_end_is_the_contracts_exit(end: dict[str, object], expected: tuple[object, ...]) -> None:
    done = exit_of(SimpleNamespace(**end), wall_ms=5, totals=(1, 2), cancelled=False)
    assert (done.code, done.signal, done.reason) == expected
    assert (done.wall_ms, done.stdout_total, done.stderr_total, done.cpu_ms) == (5, 1, 2, None)


def test_a_cancelled_command_that_a_signal_ended_says_cancelled() -> None:
    killed = SimpleNamespace(exited=False, exit_code=-1, status="signal: killed")
    assert exit_of(killed, wall_ms=1, totals=(0, 0), cancelled=True).reason == "cancelled"


# ── errors ───────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (FileNotFoundException("/home/user/x: No such file or directory"), "ENOENT"),
        (SandboxException("403: /etc/x: Read-only file system"), "EROFS"),
        (SandboxException("Code.PERMISSION_DENIED: /etc/shadow: open failed"), "EACCES"),
        (SandboxException("403: /etc/shadow"), "EACCES"),
        (SandboxException("409: it is there"), "EEXIST"),
        (InvalidArgumentException("path is a directory: /home/user is not a regular file"), "EISDIR"),
        (InvalidArgumentException("bad depth"), "EINVAL"),
        (NotEnoughSpaceException("full"), "ENOSPC"),
        (ConnectError(Code.ALREADY_EXISTS, "directory exists"), "EEXIST"),
        (ConnectError(Code.INVALID_ARGUMENT, "rename: directory not empty"), "ENOTEMPTY"),
        (ConnectError(Code.INVALID_ARGUMENT, "path /x not a directory"), "ENOTDIR"),
        (ConnectError(Code.PERMISSION_DENIED, "nope"), "EACCES"),
        (SandboxException("something odd"), "EIO"),
    ],
)
def test_file_refusals_get_their_errno_name(raised: Exception, code: str) -> None:
    assert errno_of(raised) == code
    error = sandbox_error(raised, "reading /workspace/x")
    assert isinstance(error, SandboxFileError) and error.code == code
    assert str(error).startswith("reading /workspace/x: ")


@pytest.mark.parametrize(
    ("raised", "kind", "words"),
    [
        (SandboxNotRunningException("The sandbox x was not found"), SandboxGone, "the E2B sandbox is gone"),
        (AuthenticationException("Invalid API key"), BoxSandboxError, "E2B refused the credentials"),
        (TimeoutException("Request timed out"), BoxSandboxError, "E2B did not answer in time"),
        (ConnectError(Code.UNAVAILABLE, "connection reset"), BoxSandboxError, "connection reset"),
        (ConnectError(Code.DEADLINE_EXCEEDED, "Request timed out"), BoxSandboxError, "timed out"),
    ],
)
def test_a_lost_or_unreachable_sandbox_is_no_file_error(raised: Exception, kind: type, words: str) -> None:
    assert errno_of(raised) is None
    error = sandbox_error(raised, "listing /workspace")
    assert type(error) is kind and not isinstance(error, SandboxFileError) and words in str(error)


def test_error_messages_name_the_sessions_paths() -> None:
    paths = SandboxPaths.build("/workspace")
    error = sandbox_error(FileNotFoundException("/home/user/workspace/a: not found"), "reading /workspace/a", paths)
    assert "/home/user" not in str(error) and "/workspace/a: not found" in str(error)
