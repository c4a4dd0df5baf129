"""BoxService against a real daemon on Docker: profiles with locked fields reach the sandbox,
the mount allow-list stops requests before they are sent, the audit log records what ran,
streaming exec, and graceful degradation while the daemon is away."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from boxruntime.errors import BoxManagedProcessNotFoundError, BoxValidationError
from boxruntime.models import (
    HostMountMode,
    ManagedProcessSpec,
    ManagedProcessStatus,
    NetworkMode,
    OutputChunk,
    StreamedResult,
)
from integration_tests.daemon import Daemon, containers_of, start_daemon
from integration_tests.test_bridge_connector import FAST, restart_on_same_port
from langbot_bridge import AuditLog, BoxService, BoxTools, ChatContext, Connector, RemoteTarget

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

CHAT = ChatContext(launcher_type="group", launcher_id="g1", sender_id="u7", platform="telegram")


@pytest.fixture
async def connector(daemon: Daemon) -> AsyncIterator[Connector]:
    async with Connector(RemoteTarget(daemon.url)) as link:
        await link.wait_available(60)
        yield link


async def test_locked_profile_fields_reach_the_sandbox(connector: Connector) -> None:
    service = BoxService(connector, profile="offline_readonly")
    result = await service.exec(
        "locked", "ls /sys/class/net", {"network": "on", "read_only_rootfs": False, "memory_mb": 300}
    )
    assert result.stdout.split() == ["lo"]  # no network device: the locked "off" won
    info = await service.client.get_session("locked")
    assert info.network == NetworkMode.OFF and info.read_only_rootfs is True
    assert (info.memory_mb, info.cpus, info.pids_limit) == (300, 0.5, 64)  # unlocked: the request's; else profile
    assert info.host_path_mode == HostMountMode.READ_ONLY


async def test_the_profile_timeout_cap_applies(connector: Connector) -> None:
    service = BoxService(connector, profile="offline_readonly")  # max_timeout_sec = 60
    assert service.build_spec("t", {"timeout_sec": 999}).timeout_sec == 60
    result = await service.exec("t", "echo quick", {"timeout_sec": 999})
    assert result.stdout == "quick"


async def test_refused_mounts_never_reach_the_daemon(connector: Connector, data_dir: Path, tmp_path: Path) -> None:
    shared = data_dir / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("from the host\n")
    service = BoxService(connector, allowed_mount_roots=[shared])
    with pytest.raises(BoxValidationError, match="outside the allowed mount roots"):
        await service.exec("m", "ls", {"host_path": str(tmp_path)})
    extra = [{"host_path": str(tmp_path), "mount_path": "/data", "mode": "ro"}]
    with pytest.raises(BoxValidationError, match=r"extra_mounts\[0\]"):
        await service.ensure_session("m", {"extra_mounts": extra})
    assert await service.sessions() == []  # nothing was created

    allowed = await service.exec("m", "cat /workspace/hello.txt", {"host_path": str(shared), "host_path_mode": "ro"})
    assert allowed.stdout == "from the host"


async def test_every_exec_is_audited(connector: Connector, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    tools = BoxTools(BoxService(connector, session_template="{platform}_{launcher_id}_{sender_id}", audit=audit))
    assert (await tools.call("exec", {"command": "exit 3", "description": "check"}, CHAT))["exit_code"] == 3
    assert (await tools.call("glob", {"pattern": "*.txt"}, CHAT))["ok"]
    entries = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [e["event"] for e in entries] == ["exec", "exec"]
    first, second = entries
    assert first["session_id"] == "telegram_g1_u7"
    assert first["chat"] == {"launcher_type": "group", "launcher_id": "g1", "sender_id": "u7", "platform": "telegram"}
    assert (first["command"], first["exit_code"], first["status"]) == ("exit 3", 3, "completed")
    assert first["actor"] == "tool:exec (check)" and first["duration_ms"] >= 0 and first["time"]
    assert second["command"] == "[glob] *.txt in /workspace" and second["actor"] == "tool:glob"


async def test_streamed_exec_through_the_service(connector: Connector, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    service = BoxService(connector, audit=audit)
    seen: list[str] = []
    final = None
    async for item in service.exec_stream("st", "for i in 1 2 3; do echo $i; sleep 0.1; done", chat=CHAT):
        if isinstance(item, OutputChunk):
            seen.append(item.data)
        else:
            assert isinstance(item, StreamedResult)
            final = item.result
    assert "".join(seen) == "1\n2\n3\n" and final is not None and final.exit_code == 0
    entry = json.loads((tmp_path / "audit.log").read_text())
    assert entry["session_id"] == "st" and entry["exit_code"] == 0 and entry["chat"]["sender_id"] == "u7"


async def test_tools_go_quiet_while_the_daemon_is_away(docker_engine: docker.DockerClient, data_dir: Path) -> None:
    first = start_daemon(data_dir, "--backend", "docker")
    second: Daemon | None = None
    try:
        async with Connector(RemoteTarget(first.url), timing=FAST) as link:
            await link.wait_available(60)
            tools = BoxTools(BoxService(link))
            assert len(tools.definitions()) == 6
            first.stop(signal.SIGKILL)
            assert await link.wait_unavailable(60)
            assert tools.definitions() == []
            result = await tools.call("exec", {"command": "true"}, CHAT)
            assert result["ok"] is False and "is unavailable" in result["error"]
            second = restart_on_same_port(first)
            await link.wait_available(60)
            assert len(tools.definitions()) == 6
            assert (await tools.call("exec", {"command": "echo back"}, CHAT))["stdout"] == "back"
    finally:
        if second is not None:
            second.stop()
    assert containers_of(data_dir) == []


async def test_managed_processes_are_started_stopped_and_audited(connector: Connector, tmp_path: Path) -> None:
    service = BoxService(connector, audit=AuditLog(tmp_path / "audit.log"))
    spec = ManagedProcessSpec(process_id="srv", command="sh", args=["-c", "echo up >&2; exec sleep 600"])
    info = await service.start_process("mp", spec, chat=CHAT, actor="mcp:srv")  # creates the session first
    assert (info.session_id, info.process_id, info.status) == ("mp", "srv", ManagedProcessStatus.RUNNING)
    details = await service.client.get_session("mp")
    assert details.managed_processes is not None and set(details.managed_processes) == {"srv"}
    assert (await service.client.get_managed_process("mp", "srv")).status == ManagedProcessStatus.RUNNING
    assert (await service.client.relay_info()).base_url is None  # a WebSocket daemon relays on its own port

    await service.stop_process("mp", "srv", chat=CHAT, actor="mcp:srv")
    with pytest.raises(BoxManagedProcessNotFoundError):
        await service.client.get_managed_process("mp", "srv")
    with pytest.raises(BoxManagedProcessNotFoundError):
        await service.stop_process("mp", "srv")

    entries = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(e["event"], e["process_id"], e["status"]) for e in entries] == [
        ("process_start", "srv", "running"),
        ("process_stop", "srv", "stopped"),
        ("process_stop", "srv", "error"),
    ]
    assert entries[0]["command"] == "sh -c 'echo up >&2; exec sleep 600'" and entries[0]["actor"] == "mcp:srv"
    assert entries[0]["chat"]["platform"] == "telegram" and "has no managed process" in entries[2]["error"]
