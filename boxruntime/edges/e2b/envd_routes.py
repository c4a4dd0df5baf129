"""envd's routes on the daemon's port: the two Connect services and the plain-HTTP ones.

Every Connect call is routed and authorized first (envd_calls); unary calls run under their
``Connect-Timeout-Ms``; errors become Connect errors once, here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from aiohttp import web

from boxruntime.edges.e2b.connect import ConnectError, read_unary, unary_error, unary_response
from boxruntime.edges.e2b.envd_calls import EnvdCall, connect_error, envd_call
from boxruntime.edges.e2b.files_http import FilesHttp
from boxruntime.edges.e2b.filesystem_service import FilesystemService
from boxruntime.edges.e2b.process_service import ProcessService
from boxruntime.edges.e2b.sandboxes import Sandboxes
from boxruntime.errors import BoxError

log = logging.getLogger(__name__)

Unary = Callable[[EnvdCall, dict[str, Any]], Awaitable[dict[str, Any]]]
Stream = Callable[[EnvdCall], Awaitable[web.StreamResponse]]
SERVICES = ("process.Process", "filesystem.Filesystem")


class Envd:
    def __init__(self, sandboxes: Sandboxes) -> None:
        self._sandboxes = sandboxes
        self._unary: dict[str, Unary] = {}
        self._streams: dict[str, Stream] = {}
        process, filesystem = ProcessService(), FilesystemService()
        for service, unary, streams in (
            ("process.Process", process.unary(), process.streams()),
            ("filesystem.Filesystem", filesystem.unary(), filesystem.streams()),
        ):
            self._unary.update({f"/{service}/{name}": fn for name, fn in unary.items()})
            self._streams.update({f"/{service}/{name}": fn for name, fn in streams.items()})
        self._files = FilesHttp(sandboxes)

    def routes(self) -> list[web.RouteDef]:
        return [
            *(web.post(f"/{service}/{{method}}", self.rpc) for service in SERVICES),
            web.get("/files", self._files.download),
            web.post("/files", self._files.upload),
            web.get("/health", self._files.health),
        ]

    async def rpc(self, request: web.Request) -> web.StreamResponse:
        try:
            call = envd_call(request, self._sandboxes)
            unary = self._unary.get(request.path)
            if unary is not None:
                body = await read_unary(request)
                deadline = anyio.fail_after(call.timeout) if call.timeout else contextlib.nullcontext()
                with deadline:
                    return unary_response(await unary(call, body))
            stream = self._streams.get(request.path)
            if stream is not None:
                return await stream(call)
            raise ConnectError("unimplemented", f"{request.path.lstrip('/')} is not implemented by boxruntime")
        except ConnectError as exc:
            return unary_error(exc)
        except BoxError as exc:
            return unary_error(connect_error(exc))
        except TimeoutError:
            return unary_error(ConnectError("deadline_exceeded", "context deadline exceeded"))
