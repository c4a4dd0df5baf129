"""A scripted OpenAI-compatible chat-completions server (real HTTP, the shapes of the OpenAI API
reference): ``POST /v1/chat/completions`` with a bearer key; answers are
``chat.completion`` objects whose message has ``content`` and/or ``tool_calls``
(``{"id","type":"function","function":{"name","arguments": <JSON text>}}``), with
``finish_reason`` ``"tool_calls"`` or ``"stop"``. Each answer comes from the script, which sees
the request; an integer in the script is an HTTP error status (OpenAI's error body).
"""

from __future__ import annotations

import collections
import itertools
import json
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web

from integration_tests.daemon import free_port

Step = Callable[[dict[str, Any]], dict[str, Any]] | int


def tool_call(name: str, **arguments: Any) -> dict[str, Any]:
    """An assistant message that calls one function."""
    return {"content": None, "tool_calls": [{"name": name, "arguments": arguments}]}


def answer(text: str) -> dict[str, Any]:
    return {"content": text}


class ScriptedModel:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.port = free_port()
        self.script: collections.deque[Step] = collections.deque()
        self.requests: list[dict[str, Any]] = []
        self.unauthorized = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> ScriptedModel:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.unauthorized += 1
            return self._error(401, "Incorrect API key provided.", "invalid_api_key")
        body = await request.json()
        self.requests.append(body)
        if not self.script:
            return self._error(500, "the test script has no step left", "server_error")
        step = self.script.popleft()
        if isinstance(step, int):
            return self._error(step, "scripted failure", "server_error")
        message = step(body)
        return web.json_response(self._completion(body["model"], message))

    def _completion(self, model: str, message: dict[str, Any]) -> dict[str, Any]:
        calls = [
            {
                "id": f"call_{next(self._ids)}",
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
            }
            for call in message.get("tool_calls") or []
        ]
        reply: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        if calls:
            reply["tool_calls"] = calls
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": reply, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    @staticmethod
    def _error(status: int, message: str, code: str) -> web.Response:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        return web.json_response(body, status=status)

    def always(self, step: Step, times: int) -> None:
        self.script.extend(itertools.repeat(step, times))
