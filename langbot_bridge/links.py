"""How the connector reaches a daemon: the two targets, and the link each opens.

- ``SpawnTarget`` runs ``boxruntime serve --stdio`` as our child and speaks over its pipes.
- ``RemoteTarget`` connects to ``ws://host:port/rpc/ws`` with a bearer token; an HTTP 401 on
  the upgrade is a ``BoxAuthError``, not a generic failure. The WebSocket is our own small
  client (``boxruntime.protocol.ws_client``), not aiohttp's, whose import alone costs more than a
  one-shot command's whole budget.

A link is one open transport with a ``Peer`` on it; keeping one up is the connector's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import anyio

from boxruntime.errors import BoxAuthError, BoxError, BoxRuntimeUnavailableError
from boxruntime.protocol.connection import StreamConnection
from boxruntime.protocol.envelope import MAX_MESSAGE_BYTES
from boxruntime.protocol.peer import Peer
from boxruntime.protocol.ws_client import ClientWebSocket
from boxruntime.protocol.ws_client import dial as dial_websocket
from boxruntime.protocol.ws_frames import HandshakeRefused, WebSocketError

DEFAULT_PORT = 5410
RPC_PATH = "/rpc/ws"
# The child's stdout reader: big enough that a 16 MiB message never stalls on buffer limits.
PIPE_READER_LIMIT = 2 * MAX_MESSAGE_BYTES
# The WebSocket scheme for each URL scheme a user may give for a daemon (or its relay).
WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def bearer_headers(token: str | None) -> dict[str, str]:
    """The upgrade headers that carry ``token`` (none without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True, slots=True)
class SpawnTarget:
    """A local daemon, spawned as ``<python> -m boxruntime serve --stdio <args>``."""

    args: Sequence[str] = ()  # extra ``serve`` arguments, e.g. ("--backend", "docker")
    env: Mapping[str, str] | None = None  # the child's whole environment; None inherits ours
    python: str = sys.executable
    stderr: int | IO[Any] | None = None  # where the daemon logs; None = our stderr

    def argv(self) -> list[str]:
        """The command line of the spawned daemon."""
        return [self.python, "-m", "boxruntime", "serve", "--stdio", *self.args]

    def describe(self) -> str:
        """The target in words, for logs and errors."""
        return "local daemon (boxruntime serve --stdio)"


@dataclass(frozen=True, slots=True)
class RemoteTarget:
    """A daemon listening on a WebSocket endpoint."""

    endpoint: str
    token: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The daemon's RPC URL (``websocket_url`` of the endpoint)."""
        return websocket_url(self.endpoint)

    def headers(self) -> dict[str, str]:
        """The upgrade headers: the bearer token, when there is one."""
        return bearer_headers(self.token)

    def describe(self) -> str:
        """The target in words, for logs and errors."""
        return self.url


Target = SpawnTarget | RemoteTarget


def websocket_url(endpoint: str) -> str:
    """``host:port``, ``http(s)://…`` or ``ws(s)://…`` -> the daemon's RPC URL.

    Without a path the RPC path is added; without a port, 5410 (the daemon's default).
    """
    text = endpoint.strip()
    if "://" not in text:
        text = f"ws://{text}"
    parts = urllib.parse.urlsplit(text)
    scheme = WS_SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise BoxRuntimeUnavailableError(f"endpoint {endpoint!r} is not a ws://, wss://, http:// or https:// URL")
    netloc = parts.netloc if parts.port else f"{parts.netloc}:{DEFAULT_PORT}"
    path = parts.path if parts.path not in ("", "/") else RPC_PATH
    return urllib.parse.urlunsplit((scheme, netloc, path, parts.query, ""))


# ── links: one open transport with a Peer on it ─────────────────────────


class Link(Protocol):
    """One open transport with a ``Peer`` on it."""

    peer: Peer

    def describe_loss(self) -> str:
        """How the link ended, in words, once it has."""

    async def close(self, graceful: bool, exit_grace: float) -> None:
        """Close the transport (``graceful``: give a spawned daemon ``exit_grace`` to exit)."""


class ChildLink:
    """A spawned daemon's pipes, with a ``Peer`` on them."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None and process.stdin is not None
        self.process = process
        self.peer = Peer(StreamConnection(process.stdout, process.stdin), name="bridge-stdio")

    def describe_loss(self) -> str:
        """How the link ended: the daemon closed its pipes, or exited with a code."""
        code = self.process.returncode
        return "the local daemon closed its pipes" if code is None else f"the local daemon exited with code {code}"

    async def close(self, graceful: bool, exit_grace: float) -> None:
        """EOF on its stdin lets the daemon remove its sandboxes and exit; SIGTERM does the
        same if it is not reading; SIGKILL is the last resort (the next daemon cleans up)."""
        await self.peer.aclose()
        steps: list[tuple[int | None, float]] = [(None, exit_grace), (signal.SIGTERM, exit_grace)]
        if not graceful:  # hung: it will not answer EOF or SIGTERM in time
            steps = []
        for sig, grace in steps:
            if sig is not None:
                self._signal(sig)
            with anyio.move_on_after(grace):
                await self.process.wait()
                return
        self._signal(signal.SIGKILL)
        await self.process.wait()

    def _signal(self, sig: int) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


class WebSocketLink:
    """A WebSocket to a remote daemon, with a ``Peer`` on it."""

    def __init__(self, ws: ClientWebSocket) -> None:
        self.ws = ws
        self.peer = Peer(ws, name="bridge-ws")

    def describe_loss(self) -> str:
        """How the link ended: the daemon closed the WebSocket (with its close code)."""
        code = self.ws.close_code
        return "the daemon closed the WebSocket" + (f" (code {code})" if code is not None else "")

    async def close(self, graceful: bool, exit_grace: float) -> None:
        """Close the WebSocket; a hung daemon is not waited for long."""
        with anyio.move_on_after(2 if graceful else 0.2):
            await self.peer.aclose()


async def spawn(target: SpawnTarget) -> ChildLink:
    """Start ``boxruntime serve --stdio`` as our child; BoxRuntimeUnavailableError if it cannot start."""
    env = dict(target.env) if target.env is not None else None
    try:
        process = await asyncio.create_subprocess_exec(
            *target.argv(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=target.stderr,
            env=env,
            limit=PIPE_READER_LIMIT,
        )
    except OSError as exc:
        raise BoxRuntimeUnavailableError(f"cannot start the local daemon ({target.argv()[0]}): {exc}") from exc
    return ChildLink(process)


async def dial(target: RemoteTarget) -> WebSocketLink:
    """Open the WebSocket to a remote daemon; BoxAuthError on HTTP 401, BoxRuntimeUnavailableError otherwise."""
    url = target.url
    try:
        ws = await dial_websocket(url, target.headers(), MAX_MESSAGE_BYTES)
    except (WebSocketError, OSError) as exc:
        raise _dial_error(url, target, exc) from None
    return WebSocketLink(ws)


def _dial_error(url: str, target: RemoteTarget, exc: Exception) -> BoxError:
    if isinstance(exc, HandshakeRefused):
        if exc.status == 401:
            how = "refused the token" if target.token else "requires a token and none was given"
            return BoxAuthError(f"the Box daemon at {url} {how} (HTTP 401); check --token or BOXRUNTIME_TOKEN")
        return BoxRuntimeUnavailableError(f"WebSocket upgrade to {url} failed: {exc}")
    return BoxRuntimeUnavailableError(f"cannot reach the Box daemon at {url}: {exc}")


async def open_link(target: Target) -> Link:
    """Start the local daemon or dial the remote one; BoxError says why it failed."""
    if isinstance(target, SpawnTarget):
        return await spawn(target)
    return await dial(target)
