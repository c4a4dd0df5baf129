"""MCP server specs, process ids, hub scopes, relay addresses, the install script (run by a
real shell with a stand-in pip) and the crash error's text; no daemon needed."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

import pydantic
import pytest

from boxruntime.errors import BoxValidationError
from boxruntime.models import ManagedProcessInfo, ManagedProcessStatus, RelayInfo
from langbot_bridge import RemoteTarget
from langbot_bridge.mcp import (
    McpInstall,
    McpServerCrashedError,
    McpServerSpec,
    RelayAddress,
    process_id_for,
    relay_address,
    scope_session_id,
)
from langbot_bridge.mcp.install import SKIPPED, install_script
from langbot_bridge.mcp.server import same_process

SAFE_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


# ── process ids and specs ────────────────────────────────────────────────


@pytest.mark.parametrize("name", ["time", "git_hub", "a-b", "x" * 64])
def test_plain_names_give_readable_process_ids(name: str) -> None:
    assert process_id_for(name) == f"mcp-{name}"


def test_other_names_are_made_safe_and_stay_distinct() -> None:
    names = ["a b", "a-b", "a/b", "a b ", "../etc", "日本", "x" * 65, "x" * 500, ""]
    ids = [process_id_for(name) for name in names]
    assert len(set(ids)) == len(ids)
    assert all(SAFE_ID.fullmatch(pid) and ".." not in pid.split(".")[0] for pid in ids)
    assert ids[0].startswith("mcp-a-b.") and ids[4].startswith("mcp-etc.")


def test_spec_validation() -> None:
    spec = McpServerSpec(name="  time ", command=" uvx ", args=["mcp-server-time"])
    assert (spec.name, spec.command, spec.cwd, spec.process_id) == ("time", "uvx", "/workspace", "mcp-time")
    for bad in ({"name": " "}, {"command": ""}, {"cwd": "relative"}, {"name": "a\nb"}, {"unknown": 1}):
        with pytest.raises(pydantic.ValidationError):
            McpServerSpec.model_validate({"name": "n", "command": "c", **bad})


def test_without_install_the_process_is_the_command_itself() -> None:
    spec = McpServerSpec(name="time", command="python3", args=["-m", "mcp_server_time"], env={"A": "1"}, cwd="/srv")
    process = spec.process_spec()
    assert (process.process_id, process.command, process.args, process.env, process.cwd) == (
        "mcp-time",
        "python3",
        ["-m", "mcp_server_time"],
        {"A": "1"},
        "/srv",
    )


def test_an_install_puts_its_target_first_on_the_paths() -> None:
    spec = McpServerSpec.model_validate(
        {
            "name": "time",
            "command": "mcp-server-time",
            "args": ["--x", "a b"],
            "env": {"PYTHONPATH": "/opt/lib"},
            "install": "pkg",
        }
    )
    target = "/workspace/.mcp/mcp-time/site"
    assert spec.install_target() == target
    process = spec.process_spec()
    assert process.env == {"PYTHONPATH": f"{target}:/opt/lib"}
    assert process.command == "sh" and process.args[0] == "-c" and process.args[2:] == ["mcp-server-time", "--x", "a b"]
    # The wrapper really runs the command with the arguments intact and the target's bin first.
    probe = spec.model_copy(update={"command": "sh", "args": ["-c", 'echo "$PATH|$1|$2"', "probe", "--x", "a b"]})
    wrapped = probe.process_spec()
    shown = subprocess.run([wrapped.command, *wrapped.args], capture_output=True, text=True, check=True).stdout
    assert shown.startswith(f"{target}/bin:") and shown.endswith("|--x|a b\n")


def test_install_shorthands_and_refusals() -> None:
    assert McpInstall.model_validate("mcp-server-time").requirements == ["mcp-server-time"]
    assert McpInstall.model_validate(["a", " b>=2 "]).requirements == ["a", "b>=2"]
    for bad in ["--index-url=http://evil", "", "a\nb", []]:
        with pytest.raises(pydantic.ValidationError):
            McpInstall.model_validate(bad if isinstance(bad, list) else [bad])
    with pytest.raises(pydantic.ValidationError):
        McpInstall(requirements=["a"], find_links="wheels")  # a sandbox path must be absolute
    plain, offline = McpInstall(requirements=["a"]), McpInstall(requirements=["a"], find_links="/w")
    assert plain.digest() != offline.digest() and plain.digest() == McpInstall.model_validate("a").digest()


def fake_pip(tmp_path: Path, exit_code: int = 0) -> list[str]:
    """A pip stand-in that records its arguments and creates the target directory."""
    log = tmp_path / "pip.log"
    script = f'echo "$*" >> {log}; mkdir -p "$3"; exit {exit_code}'
    return ["sh", "-c", script, "pip"]


def run_script(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)


def test_the_install_script_runs_pip_once(tmp_path: Path) -> None:
    target = str(tmp_path / "site")
    install = McpInstall(requirements=["pkg>=1"], find_links="/opt/wheels", pip=fake_pip(tmp_path))
    script = install_script(install, target)
    first, second = run_script(script), run_script(script)
    assert first.returncode == 0 and SKIPPED not in first.stdout
    assert second.returncode == 0 and SKIPPED in second.stdout
    calls = (tmp_path / "pip.log").read_text().splitlines()
    assert calls == [
        f"install --target {target} --upgrade --no-input --disable-pip-version-check "
        "--no-index --find-links /opt/wheels pkg>=1"
    ]
    changed = install.model_copy(update={"requirements": ["pkg>=2"]})
    assert SKIPPED not in run_script(install_script(changed, target)).stdout  # another install runs again


def test_a_failed_install_leaves_no_marker(tmp_path: Path) -> None:
    target = str(tmp_path / "site")
    install = McpInstall(requirements=["pkg"], pip=fake_pip(tmp_path, exit_code=1))
    assert run_script(install_script(install, target)).returncode == 1
    assert run_script(install_script(install, target)).returncode == 1  # tried again, not skipped
    assert len((tmp_path / "pip.log").read_text().splitlines()) == 2


def test_same_process_compares_what_the_daemon_echoes() -> None:
    spec = McpServerSpec(name="t", command="python3", args=["-m", "x"], env={"B": "2", "A": "1"}).process_spec()
    info = info_for(command="python3", args=["-m", "x"], env_keys=["A", "B"])
    assert same_process(info, spec)
    assert not same_process(info.model_copy(update={"args": ["-m", "y"]}), spec)
    assert not same_process(info.model_copy(update={"env_keys": ["A"]}), spec)


# ── scopes and relay addresses ───────────────────────────────────────────


def test_scopes() -> None:
    assert scope_session_id("mcp-{bot}", "helper") == "mcp-helper"
    assert scope_session_id("mcp-shared", "helper") == "mcp-shared"  # every bot in one session
    odd = [scope_session_id("mcp-{bot}", bot) for bot in ("my bot", "my-bot", "my_bot", "my/bot")]
    assert odd[1] == "mcp-my-bot" and len(set(odd)) == 4 and all(SAFE_ID.fullmatch(s) for s in odd)
    for template in ("mcp-{chat}", "mcp.{bot}", "mcp-{bot!r}", "{", ""):
        with pytest.raises(BoxValidationError):
            scope_session_id(template, "b")


def test_relay_urls() -> None:
    address = RelayAddress("http://127.0.0.1:5410", "t" * 40)
    assert address.url("s 1", "mcp-a.b") == "ws://127.0.0.1:5410/v1/sessions/s%201/managed-process/mcp-a.b/ws"
    assert address.headers() == {"Authorization": f"Bearer {'t' * 40}"}
    assert RelayAddress("https://box.example/prefix/").url("s", "p") == (
        "wss://box.example/prefix/v1/sessions/s/managed-process/p/ws"
    )
    assert RelayAddress("ws://h:1").headers() == {}
    with pytest.raises(BoxValidationError):
        RelayAddress("ftp://h").url("s", "p")


def test_relay_address_from_what_the_daemon_and_link_say() -> None:
    stdio = RelayInfo(base_url="http://127.0.0.1:4000", token="own-token")
    assert relay_address(stdio, object()) == RelayAddress("http://127.0.0.1:4000", "own-token")
    remote = type("Link", (), {"target": RemoteTarget("box:6000", token="control")})()
    on_control = relay_address(RelayInfo(base_url=None), remote)
    assert on_control.url("s", "p") == "ws://box:6000/v1/sessions/s/managed-process/p/ws"
    assert on_control.token == "control"
    proxied = relay_address(RelayInfo(base_url=None), remote, "http://proxy:81")
    assert (proxied.base_url, proxied.token) == ("http://proxy:81", "control")
    with pytest.raises(BoxValidationError, match="relay_base_url"):
        relay_address(RelayInfo(base_url=None), object())


# ── errors ───────────────────────────────────────────────────────────────


def info_for(**fields: object) -> ManagedProcessInfo:
    base: dict[str, object] = {
        "session_id": "mcp-bot",
        "process_id": "mcp-time",
        "status": ManagedProcessStatus.EXITED,
        "command": "python3",
        "args": [],
        "cwd": "/workspace",
        "env_keys": [],
        "started_at": dt.datetime.now(dt.UTC),
        "exit_code": 3,
        "stderr_preview": "",
    }
    return ManagedProcessInfo.model_validate({**base, **fields})


def test_the_crash_error_says_how_it_ended_and_what_stderr_said() -> None:
    crashed = McpServerCrashedError("time", info_for(stderr_preview="noise\n" * 1000 + "ImportError: no module x\n"))
    assert crashed.exit_code == 3 and crashed.server == "time"
    assert "exited with code 3" in str(crashed) and str(crashed).endswith("ImportError: no module x")
    assert len(str(crashed)) < 2000  # the tail of the preview, not all of it
    killed = McpServerCrashedError("time", info_for(exit_code=None))
    assert "exited by a signal" in str(killed) and "wrote nothing to stderr" in str(killed)
