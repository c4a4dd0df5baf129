"""The bridge with no daemon to reach: tool schemas, argument checks, endpoint URLs, and
graceful degradation (no tools offered, every error says why)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from boxruntime.errors import BoxRuntimeUnavailableError, BoxValidationError
from langbot_bridge import BoxService, BoxTools, ChatContext, Connector, RemoteTarget, Timing, websocket_url
from langbot_bridge.tools import ALL_TOOLS

pytestmark = pytest.mark.anyio

CHAT = ChatContext(launcher_type="person", launcher_id="1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def offline() -> AsyncIterator[Connector]:
    target = RemoteTarget(f"ws://127.0.0.1:{closed_port()}", token="t" * 40)
    async with Connector(target, timing=Timing(backoff_initial=60), reconnect=False) as connector:
        yield connector


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("ws://box:5410", "ws://box:5410/rpc/ws"),
        ("box", "ws://box:5410/rpc/ws"),
        ("box:6000", "ws://box:6000/rpc/ws"),
        ("http://box:6000/", "ws://box:6000/rpc/ws"),
        ("https://box.example.com", "wss://box.example.com:5410/rpc/ws"),
        ("wss://box:443/custom/rpc", "wss://box:443/custom/rpc"),
    ],
)
def test_endpoint_urls(endpoint: str, url: str) -> None:
    assert websocket_url(endpoint) == url


def test_bad_endpoint_is_refused() -> None:
    with pytest.raises(BoxRuntimeUnavailableError, match="not a ws://"):
        websocket_url("ftp://box")


def test_token_never_shows_in_repr() -> None:
    assert "secret" not in repr(RemoteTarget("ws://box", token="secret" * 8))


async def test_unreachable_daemon_is_reported_not_raised(offline: Connector) -> None:
    assert not offline.available
    reason = offline.unavailable_reason()
    assert "cannot reach the Box daemon" in reason and "unavailable" in reason
    with pytest.raises(BoxRuntimeUnavailableError, match="cannot reach"):
        offline.require()
    with pytest.raises(BoxRuntimeUnavailableError, match="cannot reach"):
        await offline.call("box_status", {})


async def test_no_tools_are_offered_while_unavailable(offline: Connector) -> None:
    tools = BoxTools(BoxService(offline))
    assert tools.definitions() == []
    result = await tools.call("exec", {"command": "ls"}, CHAT)
    assert result["ok"] is False
    assert "cannot reach the Box daemon" in result["error"] and "sandbox tools are unavailable" in result["error"]
    json.dumps(result)  # a tool result is always JSON-serialisable


async def test_service_calls_say_why_they_cannot_run(offline: Connector) -> None:
    service = BoxService(offline)
    assert service.available is False and "cannot reach" in (service.unavailable_reason() or "")
    with pytest.raises(BoxRuntimeUnavailableError, match="cannot reach"):
        await service.exec("s", "ls")
    with pytest.raises(BoxRuntimeUnavailableError, match="cannot reach"):
        await service.status()
    # The parts built on first use say the same.
    with pytest.raises(BoxRuntimeUnavailableError, match="cannot reach"):
        await service.files.write("s", "f.txt", "x")
    with pytest.raises(BoxRuntimeUnavailableError, match="cannot reach"):
        await service.skills.delete("demo")
    assert service.files is service.files and service.skills is service.skills


async def test_service_configuration_errors_fail_at_start(offline: Connector) -> None:
    with pytest.raises(BoxValidationError, match="unknown box profile 'nope'"):
        BoxService(offline, profile="nope")
    with pytest.raises(BoxValidationError, match=r"unknown variable \{room\}"):
        BoxService(offline, session_template="{room}")


async def test_a_refused_mount_is_refused_before_any_call(offline: Connector, tmp_path: Any) -> None:
    # The daemon is unreachable, so only the bridge's own check can produce this error.
    service = BoxService(offline, allowed_mount_roots=[tmp_path / "ok"])
    with pytest.raises(BoxValidationError, match="outside the allowed mount roots"):
        await service.exec("s", "ls", {"host_path": "/home"})


def all_keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for value in node.values() for k in all_keys(value)}
    if isinstance(node, list):
        return {k for item in node for k in all_keys(item)}
    return set()


def test_tool_definitions_are_openai_function_schemas() -> None:
    definitions = [tool.definition() for tool in ALL_TOOLS]
    assert [d["function"]["name"] for d in definitions] == ["exec", "read", "write", "edit", "glob", "grep"]
    for definition in definitions:
        assert definition["type"] == "function"
        function = definition["function"]
        assert function["description"]
        parameters = function["parameters"]
        assert parameters["type"] == "object" and parameters["additionalProperties"] is False
        assert "title" not in all_keys(parameters)
        for prop in parameters["properties"].values():
            assert prop.get("description"), (function["name"], prop)
    by_name = {d["function"]["name"]: d["function"]["parameters"] for d in definitions}
    assert by_name["exec"]["required"] == ["command"]
    assert by_name["read"]["required"] == ["path"]
    assert by_name["write"]["required"] == ["path", "content"]
    assert by_name["edit"]["required"] == ["path", "old_string", "new_string"]
    assert by_name["glob"]["required"] == ["pattern"]
    assert by_name["grep"]["required"] == ["pattern"]
    assert by_name["read"]["properties"]["limit"]["maximum"] == 10_000
    assert by_name["write"]["properties"]["encoding"]["enum"] == ["text", "base64"]


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("exec", {}, "invalid arguments for exec: command: Field required"),
        ("exec", {"command": "ls", "rm_rf": True}, "rm_rf: Extra inputs are not permitted"),
        ("read", {"path": "x", "limit": 0}, "limit: Input should be greater than or equal to 1"),
        ("write", {"path": "x", "content": "y", "encoding": "hex"}, "encoding: Input should be 'text' or 'base64'"),
        ("edit", {"path": "x", "old_string": "", "new_string": "y"}, "old_string: String should have at least 1"),
        ("exec", "{not json", "arguments for exec are not valid JSON"),
        ("exec", "[1, 2]", "arguments for exec must be a JSON object"),
        ("teleport", {}, "unknown tool 'teleport'"),
    ],
)
async def test_bad_arguments_come_back_as_clear_errors(
    offline: Connector, name: str, arguments: Any, message: str
) -> None:
    result = await BoxTools(BoxService(offline)).call(name, arguments, CHAT)
    assert result["ok"] is False
    assert message in result["error"]


async def test_json_text_arguments_are_accepted(offline: Connector) -> None:
    # Valid arguments as the model's JSON text get past parsing to the availability check.
    result = await BoxTools(BoxService(offline)).call("read", '{"path": "notes.txt"}', CHAT)
    assert result["ok"] is False and "sandbox tools are unavailable" in result["error"]


def test_the_bridge_imports_only_the_daemons_contract() -> None:
    # Every exported name and every subpackage, loaded.
    code = (
        "import sys, langbot_bridge, langbot_bridge.mcp, langbot_bridge.sandbox; "
        "[getattr(langbot_bridge, name) for name in langbot_bridge.__all__]; "
        "print(sorted(m for m in sys.modules if m.startswith('boxruntime')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = {name.strip("' ") for name in done.stdout.strip("[]\n").split(",")}
    allowed = ("boxruntime.protocol", "boxruntime.models", "boxruntime.errors")
    assert {m for m in loaded if m != "boxruntime" and not m.startswith(allowed)} == set()
    assert {"boxruntime.protocol", "boxruntime.models", "boxruntime.errors"} <= loaded


def test_importing_the_bridge_loads_only_what_is_used() -> None:
    heavy = "('boxruntime', 'pydantic', 'aiohttp', 'langbot_bridge.')"
    code = f"import sys, langbot_bridge; print(sorted(m for m in sys.modules if m.startswith({heavy})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"
    code = "import langbot_bridge; print(sorted(n for n in dir(langbot_bridge) if not n.startswith('_')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    import langbot_bridge

    assert done.stdout.strip() == str(sorted(langbot_bridge.__all__))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        langbot_bridge.NoSuchName  # noqa: B018 - the lookup is what is tested
