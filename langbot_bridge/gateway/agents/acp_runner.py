"""The ``acp`` agent: an Agent Client Protocol agent (any ACP coding agent installed in the
image) that lives in the chat's sandbox, driven with the official ``agent-client-protocol`` SDK.

- The agent is a managed process of the chat's session (``process_id``), its stdio on the
  daemon's relay (``AcpRelay``); one that already runs (the gateway restarted) is reused, one
  that exited is started again.
- Per connection: ``initialize``; per chat: ``session/new`` with ``cwd`` (``/workspace``), its id
  kept in the gateway's store. On a later connection (a gateway restart) the kept session is
  reloaded with ``session/load`` when the agent offers it, or prompted as it is when the agent
  still runs; a session the agent does not know any more is replaced by a new one.
- Per message: ``session/prompt``; ``agent_message_chunk`` updates are streamed to channels
  that stream and collected for the reply; ``session/request_permission`` is answered by
  ``permission`` (allow or reject, picking the agent's matching option).
"""

from __future__ import annotations

import contextlib
import logging
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.abc
import pydantic
from acp import PROTOCOL_VERSION, RequestError, text_block
from acp.client.connection import ClientSideConnection
from acp.schema import (
    AgentMessageChunk,
    AllowedOutcome,
    ClientCapabilities,
    DeniedOutcome,
    Implementation,
    InitializeResponse,
    PermissionOption,
    RequestPermissionResponse,
    TextContentBlock,
)

from boxruntime.errors import BoxError, BoxManagedProcessNotFoundError, BoxSessionNotFoundError
from boxruntime.models import DEFAULT_MOUNT_PATH, ManagedProcessInfo, ManagedProcessSpec, ManagedProcessStatus
from langbot_bridge.gateway.agents.acp_relay import AcpRelay
from langbot_bridge.gateway.agents.base import (
    AgentDeps,
    AgentKind,
    AgentReply,
    AgentRunner,
    AgentSettings,
    ReplyStream,
    TurnInput,
    failure_reply,
)
from langbot_bridge.mcp.endpoint import relay_address
from langbot_bridge.mcp.server import same_process

log = logging.getLogger(__name__)

CLIENT_INFO = Implementation(name="langbot_bridge-gateway", version="0.1.0")


class AcpSettings(AgentSettings):
    """``[agent] kind = "acp"``: the agent's command in the sandbox and how to answer it."""

    kind: Literal["acp"] = "acp"
    command: str = pydantic.Field(min_length=1)
    args: list[str] = pydantic.Field(default_factory=list)
    env: dict[str, str] = pydantic.Field(default_factory=dict)
    cwd: str = DEFAULT_MOUNT_PATH
    process_id: str = pydantic.Field(default="acp-agent", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    permission: Literal["allow", "reject"] = "reject"  # the answer to session/request_permission
    startup_timeout_sec: float = pydantic.Field(default=60.0, gt=0)
    relay_base_url: str | None = None  # where the daemon's relay is, when not where the link says


class _Turn:
    """The text of one prompt's answer, streamed as it grows."""

    def __init__(self, stream: ReplyStream) -> None:
        self.stream = stream
        self.text = ""

    async def add(self, piece: str) -> None:
        self.text += piece
        if self.stream.enabled:
            await self.stream.update(self.text)


class _Client:
    """The client side the agent calls: session updates, permission requests."""

    def __init__(self, permission: str) -> None:
        self.permission = permission
        self.turns: dict[str, _Turn] = {}  # ACP session id -> the prompt running in it
        self.permissions: list[tuple[str, str]] = []  # (session, chosen option kind), for diagnostics

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        turn = self.turns.get(session_id)
        if turn is None or not isinstance(update, AgentMessageChunk):
            return
        if isinstance(update.content, TextContentBlock):
            await turn.add(update.content.text)

    async def request_permission(
        self, session_id: str, tool_call: Any, options: list[PermissionOption], **kwargs: Any
    ) -> RequestPermissionResponse:
        wanted = ("allow_once", "allow_always") if self.permission == "allow" else ("reject_once", "reject_always")
        chosen = next((o for o in options if o.kind in wanted), None)
        self.permissions = [*self.permissions[-99:], (session_id, chosen.kind if chosen else "cancelled")]
        if chosen is None:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(outcome=AllowedOutcome(option_id=chosen.option_id, outcome="selected"))


class _Link:
    """One relay connection to the agent of one box session, held open by ``run`` in the
    runner's task group until ``close``."""

    def __init__(self, url: str, headers: dict[str, str], client: _Client, startup_timeout: float) -> None:
        self.url = url
        self.headers = headers
        self.client = client
        self.startup_timeout = startup_timeout
        self.conn: ClientSideConnection | None = None
        self.init: InitializeResponse | None = None
        self.known: set[str] = set()  # ACP sessions this connection created or loaded
        self._leave = anyio.Event()
        self._left = anyio.Event()

    @property
    def alive(self) -> bool:
        return self.conn is not None and not self._leave.is_set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with AcpRelay(self.url, self.headers) as relay:
                conn = ClientSideConnection(self.client, relay)  # type: ignore[arg-type]
                try:
                    with anyio.fail_after(self.startup_timeout):
                        self.init = await conn.initialize(
                            protocol_version=PROTOCOL_VERSION,
                            client_capabilities=ClientCapabilities(),
                            client_info=CLIENT_INFO,
                        )
                    self.conn = conn
                    task_status.started()
                    await self._leave.wait()
                finally:
                    self.conn = None
                    with anyio.CancelScope(shield=True):
                        await conn.close()
        finally:
            self._left.set()

    async def close(self) -> None:
        self._leave.set()
        await self._left.wait()


class AcpRunner(AgentRunner):
    """ACP agents in the chats' sandboxes, one connection per box session."""

    def __init__(self, settings: AcpSettings, deps: AgentDeps) -> None:
        self.settings = settings
        self.service = deps.service
        self.state = deps.state
        self.client = _Client(settings.permission)
        self.links: dict[str, _Link] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._stack = contextlib.AsyncExitStack()
        self._tg: anyio.abc.TaskGroup | None = None
        self.prompts = 0
        self.sessions_loaded = 0

    async def __aenter__(self) -> AcpRunner:
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for link in list(self.links.values()):
            await link.close()
        await self._stack.aclose()

    def _spec(self) -> ManagedProcessSpec:
        s = self.settings
        return ManagedProcessSpec(process_id=s.process_id, command=s.command, args=s.args, env=s.env, cwd=s.cwd)

    async def _process(self, session_id: str) -> ManagedProcessInfo:
        wanted = self._spec()
        with contextlib.suppress(BoxManagedProcessNotFoundError, BoxSessionNotFoundError):
            current = await self.service.client.get_managed_process(session_id, wanted.process_id)
            if current.status == ManagedProcessStatus.RUNNING and same_process(current, wanted):
                return current
        return await self.service.start_process(session_id, wanted, actor="gateway:acp")

    async def _link(self, session_id: str) -> _Link:
        link = self.links.get(session_id)
        if link is not None and link.alive:
            return link
        if link is not None:
            await link.close()
        await self._process(session_id)
        address = relay_address(await self.service.client.relay_info(), self.service.link, self.settings.relay_base_url)
        link = _Link(
            address.url(session_id, self.settings.process_id),
            address.headers(),
            self.client,
            self.settings.startup_timeout_sec,
        )
        assert self._tg is not None
        await self._tg.start(link.run)
        self.links[session_id] = link
        return link

    async def _session(self, link: _Link, chat_key: str) -> str:
        conn = link.conn
        assert conn is not None
        kept = await self.state.load(chat_key) if self.state is not None else None
        if kept and kept in link.known:
            return kept
        if kept:
            capabilities = link.init.agent_capabilities if link.init else None
            if capabilities is not None and capabilities.load_session:
                try:
                    await conn.load_session(cwd=self.settings.cwd, session_id=kept)
                    link.known.add(kept)
                    self.sessions_loaded += 1
                    return kept
                except RequestError as exc:
                    log.info("the ACP agent could not load session %s (%s); starting a new one", kept, exc)
            else:
                link.known.add(kept)  # the agent may still hold it; a refused prompt starts anew
                return kept
        created = await conn.new_session(cwd=self.settings.cwd)
        link.known.add(created.session_id)
        if self.state is not None:
            await self.state.save(chat_key, created.session_id)
        return created.session_id

    async def run(self, turn: TurnInput) -> AgentReply:
        """One ``session/prompt`` in the chat's ACP session; its message chunks are the reply."""
        lock = self._locks.setdefault(turn.session_id, anyio.Lock())
        async with lock:
            try:
                return await self._prompt(turn, retry=True)
            except BoxError as exc:
                return AgentReply(failure_reply("the sandbox", exc))
            except (ConnectionError, TimeoutError, RequestError) as exc:
                link = self.links.pop(turn.session_id, None)
                if link is not None:
                    await link.close()
                return AgentReply(failure_reply("the ACP agent", exc))

    async def _prompt(self, turn: TurnInput, *, retry: bool) -> AgentReply:
        link = await self._link(turn.session_id)
        chat_key = turn.inbound.chat.key
        acp_session = await self._session(link, chat_key)
        collected = _Turn(turn.stream)
        self.client.turns[acp_session] = collected
        assert link.conn is not None
        try:
            response = await link.conn.prompt(session_id=acp_session, prompt=[text_block(turn.prompt)])
        except RequestError:
            link.known.discard(acp_session)
            if not retry:
                raise
            if self.state is not None:
                await self.state.save(chat_key, None)  # the agent does not know it: start anew
            return await self._prompt(turn, retry=False)
        finally:
            self.client.turns.pop(acp_session, None)
        self.prompts += 1
        text = collected.text.strip()
        if response.stop_reason not in ("end_turn", None) and not text:
            text = f"(the agent stopped: {response.stop_reason})"
        return AgentReply(text or "(no answer)")

    def diagnostics(self) -> dict[str, Any]:
        """Open agent connections, prompts answered, sessions reloaded, permission answers."""
        return {
            "connections": sum(1 for link in self.links.values() if link.alive),
            "prompts": self.prompts,
            "sessions_loaded": self.sessions_loaded,
            "permission": self.settings.permission,
            "permission_answers": len(self.client.permissions),
        }


KIND = AgentKind("acp", AcpSettings, AcpRunner)
