"""The host backend's translation of sandbox paths into host paths (pure, on real directories),
its minimal environment, and who may select it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from boxruntime.backends.host.paths import PathMap
from boxruntime.backends.host.session import INHERITED_ENV, HostSession, inherited_env
from boxruntime.backends.selection import candidates
from boxruntime.config import HOST_BACKEND_REFUSAL, Settings, host_backend_refusal
from boxruntime.errors import BoxValidationError
from boxruntime.security import ResolvedMount


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    dirs = {name: tmp_path / name for name in ("ws", "tmp", "data", "skill")}
    for path in dirs.values():
        path.mkdir()
    return dirs


@pytest.fixture
def paths(host: dict[str, Path]) -> PathMap:
    return PathMap.build(
        ResolvedMount(str(host["ws"]), "/workspace", read_only=False),
        str(host["tmp"]),
        [
            ResolvedMount(str(host["data"]), "/data", read_only=True),
            # Inside the workspace: the longer sandbox path wins.
            ResolvedMount(str(host["skill"]), "/workspace/.skills/demo", read_only=True),
        ],
    )


def test_paths_map_into_their_mount_and_nowhere_else(paths: PathMap, host: dict[str, Path]) -> None:
    assert paths.to_host("/workspace", "workdir") == str(host["ws"])
    assert paths.to_host("/workspace/a/./b/../c", "workdir") == f"{host['ws']}/a/c"
    assert paths.to_host("/tmp/x", "path") == f"{host['tmp']}/x"
    assert paths.to_host("/data/f", "path") == f"{host['data']}/f"
    assert paths.to_host("/workspace/.skills/demo/SKILL.md", "path") == f"{host['skill']}/SKILL.md"
    for outside in ("/etc", "/workspace/../etc/passwd", "/workspacex", "/", "relative/path"):
        with pytest.raises(BoxValidationError, match="outside the session's mounts"):
            paths.to_host(outside, "workdir")
    assert paths.is_read_only("/data/f") and paths.is_read_only("/workspace/.skills/demo/x")
    assert not paths.is_read_only("/workspace/.skills/other") and not paths.is_read_only("/tmp/x")


def test_a_symlink_out_of_a_mount_is_an_escape(paths: PathMap, host: dict[str, Path]) -> None:
    (host["ws"] / "out").symlink_to("/etc")
    (host["ws"] / "in").symlink_to(host["ws"] / "sub")
    assert paths.to_host_resolved("/workspace/in/deeper", "workdir") == f"{host['ws']}/sub/deeper"
    with pytest.raises(BoxValidationError, match="escapes mount /workspace"):
        paths.to_host_resolved("/workspace/out", "workdir")


def test_commands_name_mount_paths_only_at_path_boundaries(paths: PathMap, host: dict[str, Path]) -> None:
    ws, tmp = host["ws"], host["tmp"]
    assert paths.rewrite_command("cat /workspace/a.txt > /tmp/b") == f"cat {ws}/a.txt > {tmp}/b"
    assert paths.rewrite_command('cd "/workspace" && ls /data') == f'cd "{ws}" && ls {host["data"]}'
    assert paths.rewrite_command("PATH=/workspace/bin:/tmp:$PATH x") == f"PATH={ws}/bin:{tmp}:$PATH x"
    assert paths.rewrite_command("ls /workspace/.skills/demo/") == f"ls {host['skill']}/"
    untouched = "echo /workspacex /home/u/workspace ${HOME}/workspace $(pwd)/tmp ~/tmp http://h/tmp/x"
    assert paths.rewrite_command(untouched) == untouched


def test_a_host_path_the_shell_would_split_is_refused_only_where_used(tmp_path: Path) -> None:
    spaced = tmp_path / "my files"
    spaced.mkdir()
    paths = PathMap.build(ResolvedMount(str(spaced), "/workspace", read_only=False), str(tmp_path), [])
    with pytest.raises(BoxValidationError, match="characters the shell treats specially"):
        paths.rewrite_command("ls /workspace")
    assert paths.rewrite_command("echo fine") == "echo fine"
    # argv elements are not parsed by a shell: no quoting problem there.
    assert paths.rewrite_argument("/workspace/server.py") == f"{spaced}/server.py"


def test_managed_process_executables_and_messages(paths: PathMap, host: dict[str, Path]) -> None:
    assert paths.command_path("python3") == "python3"
    assert paths.command_path("/usr/bin/python3") == "/usr/bin/python3"
    assert paths.command_path("/workspace/bin/server") == f"{host['ws']}/bin/server"
    message = f"{host['ws']}/missing.txt: No such file or directory (allowed: {host['ws']}, {host['tmp']})"
    expected = "/workspace/missing.txt: No such file or directory (allowed: /workspace, /tmp)"
    assert paths.to_sandbox_text(message) == expected
    assert paths.to_sandbox(f"{host['skill']}/SKILL.md") == "/workspace/.skills/demo/SKILL.md"
    assert paths.to_sandbox("/etc/passwd") == "/etc/passwd"


def test_a_root_mount_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BoxValidationError, match="would stand for every path"):
        PathMap.build(ResolvedMount(str(tmp_path), "/", read_only=False), str(tmp_path), [])


def test_commands_inherit_only_the_locale_terminal_and_path(tmp_path: Path) -> None:
    daemon_env = {
        "PATH": "/opt/bin:/usr/bin",
        "LANG": "C.UTF-8",
        "TERM": "xterm",
        "BOXRUNTIME_TOKEN": "t" * 40,
        "LANGBOT_BOX_CONTROL_TOKEN": "l" * 40,
        "E2B_API_KEY": "e2b",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "OPENAI_API_KEY": "sk",
        "HOME": "/root",
    }
    assert inherited_env(daemon_env) == {"PATH": "/opt/bin:/usr/bin", "LANG": "C.UTF-8", "TERM": "xterm"}
    assert inherited_env({})["PATH"] == os.defpath
    assert set(INHERITED_ENV) == {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TERM"}
    session = HostSession.create(tmp_path / "root", ResolvedMount(str(tmp_path), "/workspace", False), [])
    env = session.command_env({"MINE": "1", "HOME": "/custom"})
    assert env == {
        "HOME": "/custom",  # the request's own variables come last
        "TMPDIR": str(tmp_path / "root" / "tmp"),
        "LANGBOT_BOX_WORKSPACE": str(tmp_path),
        "MINE": "1",
    }


def test_host_is_chosen_only_by_name_and_never_over_a_tokenless_websocket() -> None:
    assert "host" not in candidates(Settings(backend="local"))
    assert candidates(Settings(backend="host")) == ("host",)
    assert host_backend_refusal("host", None, websocket=True) == HOST_BACKEND_REFUSAL
    assert host_backend_refusal(" HOST ", "", websocket=True) == HOST_BACKEND_REFUSAL
    assert host_backend_refusal("host", "t" * 40, websocket=True) is None
    assert host_backend_refusal("host", None, websocket=False) is None  # stdio
    assert host_backend_refusal("docker", None, websocket=True) is None
