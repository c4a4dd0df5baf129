"""A bncr client, written from seed 003 (@xmoxmo/bncr 0.0.3's README) and field-2026-12 §3.4
(bridge v2), not from our channel:

- JSON text frames: requests ``{"type":"req","id","method","params"}``, responses
  ``{"type":"res","id","ok","result"}``, events ``{"type":"event","event","payload"}``.
- It calls ``bncr.connect`` first and again after every reconnect; sends ``bncr.inbound``
  (``platform``, ``groupId``, ``userId``, ``msgId``, ``type``, ``msg``, ``base64`` or ``path``);
  consumes ``bncr.push`` (``type: message.outbound``) and keeps pushes idempotent by
  ``idempotencyKey``.
- Files to the gateway: ``bncr.file.init`` / ``chunk`` (256 KB, with SHA-256) / ``complete``,
  whose answer carries the ``path`` that the next ``bncr.inbound`` names.
- Files from the gateway: ``bncr.file.init`` / ``chunk`` / ``complete`` events; each chunk is
  acknowledged with ``bncr.file.ack {stage:"chunk"}``, the whole with ``stage:"complete"`` and
  the path where the client saved it.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from types import TracebackType
from typing import Any

import aiohttp
import anyio
import anyio.abc

CHUNK = 256 * 1024


class BncrError(Exception):
    pass


class BncrClient:
    def __init__(self, url: str, *, token: str | None, account: str = "Primary", header_token: bool = True) -> None:
        self.url = url
        self.token = token
        self.account = account
        self.header_token = header_token
        self.pushes: list[dict[str, Any]] = []  # message.outbound payloads, first delivery of each key
        self.repeats = 0  # pushes whose idempotencyKey was seen before
        self.files: dict[str, bytes] = {}  # saved path -> bytes received from the gateway
        self.skip_chunk_acks: set[int] = set()  # chunk indexes whose first ack is withheld (tests retries)
        self._incoming: dict[str, dict[str, Any]] = {}
        self._seen_keys: set[str] = set()
        self._ids = itertools.count(1)
        self._waiting: dict[str, tuple[anyio.Event, list[dict[str, Any]]]] = {}
        self._changed = anyio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> BncrClient:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token and self.header_token else {}
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.url, headers=headers, max_msg_size=64 * 1024 * 1024)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._read)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._tg = None
        if self._http is not None:
            await self._http.close()

    # ── requests ─────────────────────────────────────────────────────────

    async def _send(self, frame: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_str(json.dumps(frame))

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The whole response frame (``ok``, ``result`` or ``error``)."""
        request_id = f"r{next(self._ids)}"
        done = anyio.Event()
        box: list[dict[str, Any]] = []
        self._waiting[request_id] = (done, box)
        await self._send({"type": "req", "id": request_id, "method": method, "params": params})
        with anyio.fail_after(60):
            await done.wait()
        return box[0]

    async def ok(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        response = await self.call(method, params)
        if not response["ok"]:
            raise BncrError(response["error"])
        result: dict[str, Any] = response["result"]
        return result

    async def connect(self, **extra: Any) -> dict[str, Any]:
        params = {"accountId": self.account, "clientId": "bncr-client-1", **extra}
        if self.token and not self.header_token:
            params["token"] = self.token
        return await self.ok("bncr.connect", params)

    async def inbound(self, **params: Any) -> dict[str, Any]:
        return await self.ok("bncr.inbound", {"accountId": self.account, "groupId": "0", "type": "text", **params})

    async def upload(self, data: bytes, file_name: str, mime_type: str, session_key: str) -> str:
        transfer = hashlib.sha256(data).hexdigest()[:16] + "-up"
        chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        await self.ok(
            "bncr.file.init",
            {
                "transferId": transfer,
                "sessionKey": session_key,
                "fileName": file_name,
                "mimeType": mime_type,
                "fileSize": len(data),
                "chunkSize": CHUNK,
                "totalChunks": len(chunks),
                "fileSha256": hashlib.sha256(data).hexdigest(),
            },
        )
        for index, piece in enumerate(chunks):
            await self.ok(
                "bncr.file.chunk",
                {
                    "transferId": transfer,
                    "chunkIndex": index,
                    "offset": index * CHUNK,
                    "size": len(piece),
                    "chunkSha256": hashlib.sha256(piece).hexdigest(),
                    "base64": base64.b64encode(piece).decode(),
                },
            )
        done = await self.ok("bncr.file.complete", {"transferId": transfer})
        assert done["size"] == len(data) and done["fileSha256"] == hashlib.sha256(data).hexdigest()
        return str(done["path"])

    # ── what the gateway sends ───────────────────────────────────────────

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            if frame.get("type") == "res":
                waiter = self._waiting.pop(str(frame.get("id")), None)
                if waiter is not None:
                    waiter[1].append(frame)
                    waiter[0].set()
            elif frame.get("type") == "event":
                await self._event(frame["event"], frame["payload"])

    async def _event(self, name: str, payload: dict[str, Any]) -> None:
        if name == "bncr.push":
            assert payload["type"] == "message.outbound"
            key = payload["idempotencyKey"]
            if key in self._seen_keys:
                self.repeats += 1
            else:
                self._seen_keys.add(key)
                self.pushes.append(payload)
            self._notify()
        elif name == "bncr.file.init":
            self._incoming[payload["transferId"]] = {**payload, "chunks": {}}
        elif name == "bncr.file.chunk":
            await self._chunk(payload)
        elif name == "bncr.file.complete":
            await self._complete(payload["transferId"])

    async def _chunk(self, payload: dict[str, Any]) -> None:
        transfer = self._incoming[payload["transferId"]]
        index = payload["chunkIndex"]
        if index in self.skip_chunk_acks:  # pretend this ack got lost: the gateway must send it again
            self.skip_chunk_acks.discard(index)
            return
        data = base64.b64decode(payload["base64"])
        ok = hashlib.sha256(data).hexdigest() == payload["chunkSha256"] and len(data) == payload["size"]
        transfer["chunks"][index] = data
        await self._ack(payload["transferId"], "chunk", ok, chunkIndex=index)

    async def _complete(self, transfer_id: str) -> None:
        transfer = self._incoming.pop(transfer_id)
        data = b"".join(transfer["chunks"][i] for i in range(transfer["totalChunks"]))
        ok = hashlib.sha256(data).hexdigest() == transfer["fileSha256"] and len(data) == transfer["fileSize"]
        path = f"/data/bncr/{transfer['fileName']}"
        if ok:
            self.files[path] = data
        await self._ack(transfer_id, "complete", ok, path=path)

    async def _ack(self, transfer_id: str, stage: str, ok: bool, **extra: Any) -> None:
        # Sent without waiting for the answer: this task is the one that reads answers.
        params = {"accountId": self.account, "transferId": transfer_id, "stage": stage, "ok": ok, **extra}
        await self._send({"type": "req", "id": f"a{next(self._ids)}", "method": "bncr.file.ack", "params": params})

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_pushes(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        with anyio.fail_after(timeout):
            while len(self.pushes) < count:
                await self._changed.wait()
        return self.pushes
