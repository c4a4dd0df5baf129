"""envd's plain-HTTP routes: ``GET /files`` (download), ``POST /files`` (upload), ``GET /health``.

- Download: the file's bytes, streamed in pieces from the sandbox's agent; gzip when the
  client asks for gzip alone. 404 for a missing file, 400 for a directory.
- Upload: multipart (field ``file``; the ``path`` query wins, else each part's filename is its
  path) or ``application/octet-stream`` with ``path`` (gzip ``Content-Encoding`` is undone by
  the server). Parents are made, existing files replaced; the answer lists what was written.
- Both accept the sandbox's access token, or instead a signed URL (``signature``, and
  ``signature_expiration``): ``v1_`` + base64(sha256("path:op:user:token[:expiration]")). A
  signed URL works without the ``E2b-Sandbox-Id`` header (a browser does not send one): the
  signature says which sandbox it is for.
- Health: 204 for a live sandbox; otherwise 502 "... was not found", as E2B's proxy says.
"""

from __future__ import annotations

import base64
import email.message
import hashlib
import json
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
from aiohttp import BodyPartReader, web

from boxruntime.backends.contract import SandboxFileError
from boxruntime.edges.e2b.connect import ConnectError
from boxruntime.edges.e2b.envd_calls import (
    ACCESS_TOKEN_HEADER,
    SANDBOX_HEADER,
    connect_error,
    routed_sandbox,
    token_matches,
)
from boxruntime.edges.e2b.sandboxes import E2BSandbox, Sandboxes
from boxruntime.edges.e2b.users import check_user, resolve
from boxruntime.errors import BoxError

CHUNK = 8 * 1024 * 1024  # one agent file operation moves at most this much
ROOTS = ["/"]
NO_ACCESS = "unauthorized access, please provide a valid access token or method signing if supported"
HTTP_STATUS = {
    "not_found": 404,
    "invalid_argument": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "resource_exhausted": 507,
    "unavailable": 502,  # the sandbox went away: what E2B's proxy answers then
}


def signature(path: str, operation: str, user: str, token: str, expiration: str | None) -> str:
    raw = f"{path}:{operation}:{user}:{token}" + (f":{expiration}" if expiration else "")
    return "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=").decode("ascii")


def expired(expiration: str) -> bool:
    try:
        return int(expiration) < time.time()
    except ValueError:
        return True


def unauthorized(message: str) -> web.HTTPException:
    """401 as envd writes it: ``{"code": 401, "message": ...}``."""
    return web.HTTPUnauthorized(text=json.dumps({"code": 401, "message": message}), content_type="application/json")


def part_path(part: BodyPartReader) -> str | None:
    """The filename of a multipart part as sent: envd takes it as the file's path, so a leading
    slash matters (aiohttp's own ``filename`` strips it, as a browser upload would want)."""
    header = email.message.Message()
    header["content-disposition"] = part.headers.get("Content-Disposition", "")
    return header.get_filename()


class FilesHttp:
    def __init__(self, sandboxes: Sandboxes) -> None:
        self._sandboxes = sandboxes

    def _signed_sandbox(self, request: web.Request, operation: str) -> E2BSandbox | None:
        """The sandbox whose access token signed this URL, if it is signed (envd's order: the
        signature first, then its expiry). A token in the header goes before a signature."""
        offered = request.query.get("signature")
        if not offered or request.headers.get(ACCESS_TOKEN_HEADER):
            return None
        expiration = request.query.get("signature_expiration")
        path, user = request.query.get("path", ""), request.query.get("username", "")
        wanted = request.headers.get(SANDBOX_HEADER)
        for sandbox in self._sandboxes.all():
            if wanted and sandbox.sandbox_id != wanted:
                continue
            if sandbox.access_token and token_matches(
                offered, signature(path, operation, user, sandbox.access_token, expiration)
            ):
                if expiration is not None and expired(expiration):
                    raise unauthorized("signature is already expired")
                return sandbox
        raise unauthorized("invalid signature")

    def _authorized(self, request: web.Request, operation: str) -> E2BSandbox:
        signed = self._signed_sandbox(request, operation)
        if signed is not None:
            return signed
        sandbox = routed_sandbox(request, self._sandboxes)
        if sandbox.access_token is not None and not token_matches(
            request.headers.get(ACCESS_TOKEN_HEADER), sandbox.access_token
        ):
            raise unauthorized(NO_ACCESS)
        return sandbox

    @staticmethod
    def _path(request: web.Request, given: str | None) -> str:
        check_user(request.query.get("username"))
        if not given:
            raise ConnectError("invalid_argument", "a path is needed (the path query parameter)")
        return resolve(given)

    async def health(self, request: web.Request) -> web.StreamResponse:
        sandbox_id = request.headers.get(SANDBOX_HEADER)
        if sandbox_id:
            routed_sandbox(request, self._sandboxes)  # 502 "... was not found" for a gone sandbox
        return web.Response(status=204)

    # ── download ─────────────────────────────────────────────────────────

    async def download(self, request: web.Request) -> web.StreamResponse:
        try:
            sandbox = self._authorized(request, "read")
            path = self._path(request, request.query.get("path"))
            files = self._sandboxes.runtime.files
            first = await files.read_file(sandbox.session_id, path, ROOTS, 0, CHUNK)
            data = first.data
        except (ConnectError, BoxError) as exc:
            return self._error(exc)
        # gzip when asked for it alone (``files.read(gzip=True)``); httpx lists gzip in every
        # request by default, and on the daemon's own machine compressing only costs time.
        compress = request.headers.get("Accept-Encoding", "").strip().lower() == "gzip"
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if compress:
            response.headers["Content-Encoding"] = "gzip"
        elif first.eof:
            response.content_length = len(data)  # not the size stat gives: /proc files say 0
        await response.prepare(request)
        packer = zlib.compressobj(level=1, wbits=31) if compress else None  # 31: gzip framing
        offset, eof = len(data), first.eof
        while True:
            if packer is not None:
                data = await anyio.to_thread.run_sync(packer.compress, data)  # MBs: off the event loop
            await response.write(data)
            if eof:
                break
            chunk = await files.read_file(sandbox.session_id, path, ROOTS, offset, CHUNK)
            data = chunk.data
            offset, eof = offset + len(data), chunk.eof or not data
        if packer is not None:
            await response.write(packer.flush())
        await response.write_eof()
        return response

    # ── upload ───────────────────────────────────────────────────────────

    async def upload(self, request: web.Request) -> web.StreamResponse:
        try:
            sandbox = self._authorized(request, "write")
            written = []
            if request.content_type == "multipart/form-data":
                reader = await request.multipart()
                single = request.query.get("path")
                async for part in reader:
                    if not isinstance(part, BodyPartReader) or part.name != "file":
                        continue
                    path = self._path(request, single or part_path(part))
                    written.append(await self._write(sandbox, path, self._part_chunks(part)))
            else:
                path = self._path(request, request.query.get("path"))
                written.append(await self._write(sandbox, path, self._body_chunks(request)))
        except (ConnectError, BoxError) as exc:
            return self._error(exc)
        if not written:
            return self._error(ConnectError("invalid_argument", "no file in the upload (multipart field 'file')"))
        return web.json_response(written)

    async def _write(self, sandbox: E2BSandbox, path: str, chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        files = self._sandboxes.runtime.files
        first = True
        async for chunk in chunks:
            await files.write_file(sandbox.session_id, path, ROOTS, chunk, append=not first)
            first = False
        # Last, the file is given to the user, as envd does (watchers see a chmod event).
        await files.write_file(sandbox.session_id, path, ROOTS, b"", append=not first, own=True)
        return {"name": path.rsplit("/", 1)[-1], "type": "file", "path": path}

    @staticmethod
    async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
        buffer = bytearray()
        while piece := await part.read_chunk(1 << 20):
            buffer += piece
            if len(buffer) >= CHUNK:
                yield bytes(buffer)
                buffer.clear()
        if buffer:
            yield bytes(buffer)

    @staticmethod
    async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
        buffer = bytearray()
        async for piece in request.content.iter_chunked(1 << 20):
            buffer += piece
            if len(buffer) >= CHUNK:
                yield bytes(buffer)
                buffer.clear()
        if buffer:
            yield bytes(buffer)

    @staticmethod
    def _error(exc: ConnectError | BoxError) -> web.Response:
        error = exc if isinstance(exc, ConnectError) else connect_error(exc)
        if isinstance(exc, SandboxFileError) and exc.code == "EISDIR":
            error = ConnectError("invalid_argument", f"path is a directory: {exc}")
        status = HTTP_STATUS.get(error.code, 500)
        return web.json_response({"code": status, "message": error.message}, status=status)
