"""The ``openai`` agent runner: the official ``openai`` SDK on our side, a scripted
OpenAI-compatible server (real HTTP) on the other, the real daemon underneath. The model's tool
calls run in the chat's sandbox (the bridge's tools, an MCP server's tools in the box, a
mounted skill); history is kept per chat; a model failure or a runaway tool loop becomes a
short reply."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration_tests.daemon import Daemon, connect
from integration_tests.gateway_harness import GatewayProcess, shared_daemon
from integration_tests.gateway_peers.http_bot import HttpBotCaller
from integration_tests.gateway_peers.model import ScriptedModel, answer, tool_call
from integration_tests.mcp_site import build_mcp_root, fixture_spec, mounts
from langbot_bridge import BoxClient, SkillService

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

SECRET = "http-bot-secret-for-the-model-tests"
API_KEY = "sk-test-0123456789abcdefghijklmnop"


@pytest.fixture(scope="module")
def mcp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mcp_root(tmp_path_factory.mktemp("mcp-root"))


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, mcp_root: Path) -> Iterator[Daemon]:
    with shared_daemon(tmp_path_factory, "--allow-mount-root", str(mcp_root)) as daemon:
        yield daemon


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def caller() -> AsyncIterator[HttpBotCaller]:
    async with HttpBotCaller(SECRET) as peer:
        yield peer


@pytest.fixture
async def model() -> AsyncIterator[ScriptedModel]:
    async with ScriptedModel(API_KEY) as server:
        yield server


def start(
    tmp_path: Path, box: Daemon, caller: HttpBotCaller, model: ScriptedModel, *, box_extra: Any = None, **agent: Any
) -> GatewayProcess:
    channel = {
        "kind": "http_bot",
        "name": "api",
        "bot_id": "b",
        "secret_env": "HB_SECRET",
        "callback_url": caller.callback_url,
    }
    settings = {
        "kind": "openai",
        "base_url": model.base_url,
        "model": "scripted-1",
        "api_key_env": "MODEL_KEY",
        "max_retries": 0,
    }
    gateway = GatewayProcess(
        tmp_path / "gw",
        box,
        [channel],
        agent={**settings, **agent},
        env={"HB_SECRET": SECRET, "MODEL_KEY": API_KEY},
        extra={"box": box_extra or {}},
    )
    gateway.start()
    caller.bot_url = f"{gateway.url}/bots/b"
    return gateway


def last_tool_result(request: dict[str, Any]) -> dict[str, Any]:
    content = next(m for m in reversed(request["messages"]) if m["role"] == "tool")["content"]
    result: dict[str, Any] = json.loads(content)
    return result


async def test_tool_calls_run_in_the_chats_sandbox_and_history_is_kept(
    tmp_path: Path, box: Daemon, caller: HttpBotCaller, model: ScriptedModel
) -> None:
    gateway = start(tmp_path, box, caller, model)
    try:
        model.script.extend(
            [
                lambda _: tool_call("exec", command="echo $((6*7)) > answer; cat answer"),
                lambda _: tool_call("read", path="answer"),
                lambda request: answer(f"It is {last_tool_result(request)['content'].strip()}."),
            ]
        )
        await caller.say("m-1", "What is six times seven? Keep it in a file.")
        (reply,) = await caller.wait_callbacks(1)
        assert reply["message"][0]["text"] == "It is 42."
        first = model.requests[0]
        assert first["model"] == "scripted-1"
        assert first["messages"][0]["role"] == "system" and "/workspace/outbox/" in first["messages"][0]["content"]
        assert first["messages"][-1] == {"role": "user", "content": "What is six times seven? Keep it in a file."}
        assert {t["function"]["name"] for t in first["tools"]} == {"exec", "read", "write", "edit", "glob", "grep"}
        executed = last_tool_result(model.requests[1])
        assert (executed["exit_code"], executed["stdout"], executed["session_id"]) == (0, "42", "gw_api_person_m-1")
        model.script.append(lambda _: answer("Still 42."))
        await caller.say("m-1", "And again?")
        await caller.wait_callbacks(2)
        history = model.requests[3]["messages"]
        roles = [m["role"] for m in history]
        assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "user"]
        assert history[6]["content"] == "It is 42."
        model.script.append(lambda request: answer(str(len(request["messages"]))))
        await caller.say("m-2", "A different chat starts afresh.")
        await caller.wait_callbacks(3)
        assert caller.texts("m-2") == ["2"]  # system + this message
        assert model.unauthorized == 0
        assert API_KEY not in gateway.log() and API_KEY not in json.dumps(await gateway.diagnostics())
    finally:
        gateway.stop()


async def test_failures_and_runaway_loops_become_short_replies(
    tmp_path: Path, box: Daemon, caller: HttpBotCaller, model: ScriptedModel
) -> None:
    gateway = start(tmp_path, box, caller, model, max_turns=3)
    try:
        model.script.append(500)
        await caller.say("m-3", "hello?")
        (failed,) = await caller.wait_callbacks(1)
        assert failed["message"][0]["text"].startswith("Sorry, the model failed: Error code: 500")
        model.always(lambda _: tool_call("exec", command="true"), 3)
        await caller.say("m-3", "loop forever")
        await caller.wait_callbacks(2)
        assert caller.texts("m-3")[1] == "(I stopped after 3 model calls without a final answer.)"
        diagnostics = await gateway.diagnostics()
        assert diagnostics["agent"]["model_errors"] == 1 and diagnostics["agent"]["model_calls"] == 4
    finally:
        gateway.stop()


async def test_skills_are_offered_and_mounted(
    tmp_path: Path, box: Daemon, caller: HttpBotCaller, model: ScriptedModel
) -> None:
    source = tmp_path / "greeter"
    source.mkdir()
    (source / "SKILL.md").write_text("---\nname: greeter\ndescription: Greets people warmly\n---\n\nSay hello twice.\n")
    async with connect(box) as peer:
        [skill] = await SkillService(BoxClient(peer)).install_path(source, target_suffix="")
    assert skill.name == "greeter"
    gateway = start(tmp_path, box, caller, model, box_extra={"skills": ["greeter"]})
    try:
        model.script.extend(
            [
                lambda _: tool_call("read", path="/workspace/.skills/greeter/SKILL.md"),
                lambda request: answer(last_tool_result(request)["content"].split("---")[-1].strip()),
            ]
        )
        await caller.say("m-4", "greet me")
        (reply,) = await caller.wait_callbacks(1)
        assert reply["message"][0]["text"] == "Say hello twice."
        system = model.requests[0]["messages"][0]["content"]
        assert "- greeter: Greets people warmly (/workspace/.skills/greeter/SKILL.md)" in system
    finally:
        gateway.stop()


async def test_mcp_tools_run_in_the_box(
    tmp_path: Path, box: Daemon, caller: HttpBotCaller, model: ScriptedModel, mcp_root: Path
) -> None:
    spec = fixture_spec().model_dump(mode="json")
    gateway = start(
        tmp_path,
        box,
        caller,
        model,
        mcp_servers=[spec],
        mcp_session=mounts(mcp_root),
        box_extra={"allowed_mount_roots": [str(mcp_root)]},
    )
    try:
        model.script.extend(
            [
                lambda _: tool_call("mcp__fixture__echo", text="from the box"),
                lambda request: answer("echo said: " + last_tool_result(request)["content"]),
            ]
        )
        await caller.say("m-5", "use the echo tool")
        (reply,) = await caller.wait_callbacks(1, timeout=120)
        assert reply["message"][0]["text"] == "echo said: from the box"
        offered = {t["function"]["name"] for t in model.requests[0]["tools"]}
        assert {"mcp__fixture__echo", "mcp__fixture__counter", "exec"} <= offered
    finally:
        gateway.stop()
