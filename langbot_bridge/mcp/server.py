"""``BoxMcpServer``: one stdio MCP server running in a Box session, used through the SDK.

Start: reuse the managed process when one with the same command already runs there (it
survived a bot restart), otherwise install its package (when the spec asks) and start it.
Then connect ``mcp.ClientSession`` over the relay (``RelayTransport``) and initialize.

While it runs, a dropped relay is dialled again by the transport: the process is not
restarted, the MCP session is not renegotiated, and replies written meanwhile come from the
daemon's replay. A server that exits is reported as ``McpServerCrashedError`` with its exit
code and stderr preview, on the call that notices it; ``restart()`` starts it again.

The connection (transport + ClientSession) lives in a task of a task group that outlives it:
the server's own (``async with BoxMcpServer(...)``) or its hub's (``start(task_group)``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc
import mcp_types as types
import pydantic
from mcp import ClientSession
from mcp.client.session import MessageHandlerFnT
from mcp.shared.exceptions import MCPError

from boxruntime.errors import BoxError, BoxManagedProcessNotFoundError, BoxSessionNotFoundError
from boxruntime.models import ManagedProcessInfo, ManagedProcessSpec, ManagedProcessStatus
from langbot_bridge.mcp.endpoint import RelayAddress, relay_address
from langbot_bridge.mcp.errors import (
    McpRelayLostError,
    McpRequestError,
    McpServerCrashedError,
    McpServerError,
    McpServerStoppedError,
    McpTimeoutError,
)
from langbot_bridge.mcp.install import ensure_installed
from langbot_bridge.mcp.spec import McpServerSpec
from langbot_bridge.mcp.transport import RelayPolicy, RelayTransport
from langbot_bridge.service import BoxService

log = logging.getLogger(__name__)

T = TypeVar("T")
CLIENT_INFO = types.Implementation(name="langbot_bridge", version="0.1.0")


@dataclass(frozen=True, slots=True)
class McpTiming:
    startup_timeout: float = 60.0  # from the process start to the answer to initialize
    request_timeout: float = 120.0  # a request's default limit, including a relay outage


def same_process(info: ManagedProcessInfo, wanted: ManagedProcessSpec) -> bool:
    """Whether a running process is the one ``wanted`` would start (env values are never
    echoed by the daemon, so only the env names can be compared)."""
    return (info.command, info.args, info.cwd, info.env_keys) == (
        wanted.command,
        wanted.args,
        wanted.cwd,
        sorted(wanted.env),
    )


class _Connection:
    """Transport + ClientSession, entered and left by one task (``run``)."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        policy: RelayPolicy,
        startup_timeout: float,
        session_options: Mapping[str, Any],
        adopt: types.InitializeResult | None,
    ) -> None:
        self.transport = RelayTransport(url, headers, policy=policy)
        self.session: ClientSession | None = None
        self.initialize_result = adopt
        self._startup_timeout = startup_timeout
        self._session_options = session_options
        self._leave = anyio.Event()
        self._left = anyio.Event()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        failure: Exception | None = None
        try:
            async with self.transport as (read, write), ClientSession(read, write, **self._session_options) as session:
                try:
                    if self.initialize_result is not None:
                        session.adopt(self.initialize_result)  # the server is initialized already
                    else:
                        with anyio.fail_after(self._startup_timeout):
                            self.initialize_result = await session.initialize()
                except Exception as exc:
                    failure = exc  # raised once the contexts are left, so it is not wrapped in a group
                else:
                    self.session = session
                    task_status.started()
                    await self._leave.wait()
            if failure is not None:
                raise failure
        finally:
            self.session = None
            self._left.set()

    async def close(self) -> None:
        self._leave.set()
        await self._left.wait()


class BoxMcpServer:
    """An MCP server in a session. ``async with BoxMcpServer(service, session_id, spec) as s:``
    (the session must exist, or ``session_request`` says how to create it)."""

    def __init__(
        self,
        service: BoxService,
        session_id: str,
        spec: McpServerSpec,
        *,
        session_request: Mapping[str, Any] | None = None,
        relay_base_url: str | None = None,
        relay_policy: RelayPolicy | None = None,
        timing: McpTiming | None = None,
        client_info: types.Implementation | None = None,
        message_handler: MessageHandlerFnT | None = None,
        stop_on_close: bool = False,
    ) -> None:
        self.service = service
        self.session_id = session_id
        self.spec = spec
        self.session_request = dict(session_request or {})
        self.relay_base_url = relay_base_url
        self.relay_policy = relay_policy or RelayPolicy()
        self.timing = timing or McpTiming()
        self.stop_on_close = stop_on_close
        self.info: ManagedProcessInfo | None = None  # as last seen
        self.reused = False  # the last start found the process running and kept it
        self.installed = False  # the last start ran pip (False: no install, or already there)
        self._session_options: dict[str, Any] = {
            "client_info": client_info or CLIENT_INFO,
            "logging_callback": self._log_from_server,
        }
        if message_handler is not None:
            self._session_options["message_handler"] = message_handler
        self._address: RelayAddress | None = None
        self._connection: _Connection | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._own: contextlib.AsyncExitStack | None = None

    # ── state ─────────────────────────────────────────────────────────────

    @property
    def name(self) -> str:
        """The server's name (its spec's)."""
        return self.spec.name

    @property
    def process_id(self) -> str:
        """The managed-process id it runs as."""
        return self.spec.process_id

    @property
    def transport(self) -> RelayTransport | None:
        """The relay transport of the current connection, if connected."""
        return self._connection.transport if self._connection is not None else None

    @property
    def connected(self) -> bool:
        """The relay is connected right now."""
        return self._connection is not None and self._connection.transport.connected

    @property
    def healthy(self) -> bool:
        """Connected, or still able to reconnect by itself."""
        connection = self._connection
        return connection is not None and connection.session is not None and connection.transport.ended is None

    @property
    def initialize_result(self) -> types.InitializeResult | None:
        """What the server answered to ``initialize``, once connected."""
        return self._connection.initialize_result if self._connection is not None else None

    @property
    def capabilities(self) -> types.ServerCapabilities | None:
        """The server's capabilities, once connected."""
        result = self.initialize_result
        return result.capabilities if result is not None else None

    async def status(self) -> ManagedProcessInfo:
        """The process as the daemon sees it now."""
        self.info = await self.service.client.get_managed_process(self.session_id, self.process_id)
        return self.info

    # ── lifecycle ─────────────────────────────────────────────────────────

    async def __aenter__(self) -> BoxMcpServer:
        stack = contextlib.AsyncExitStack()
        task_group = await stack.enter_async_context(anyio.create_task_group())
        try:
            await self.start(task_group)
        except BaseException:
            task_group.cancel_scope.cancel()
            await stack.aclose()
            raise
        self._own = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._own = self._own, None
        try:
            await self.close()
        finally:
            if stack is not None:
                await stack.aclose()

    async def start(self, task_group: anyio.abc.TaskGroup) -> ManagedProcessInfo:
        """Start or reuse the process and connect; the connection runs in ``task_group``."""
        if self._task_group is not None:
            raise RuntimeError(f"MCP server {self.name!r} is already started")
        self._task_group = task_group
        try:
            info = await self._ensure_process(replace=False)
            await self._connect_started()
        except BaseException:
            self._task_group = None
            raise
        return info

    async def restart(self) -> ManagedProcessInfo:
        """Start the process again (replacing it if it still runs) and reconnect."""
        await self._disconnect()
        info = await self._ensure_process(replace=True)
        await self._connect_started()
        return info

    async def _connect_started(self) -> None:
        """Connect to the process just started or reused; one we started that cannot be
        reached or initialized is stopped, not left running unseen (the error says why)."""
        try:
            await self._connect(adopt=None)
        except Exception:
            if not self.reused:
                with contextlib.suppress(BoxError):
                    await self.service.client.stop_managed_process(self.session_id, self.process_id)
            raise

    async def reconnect(self) -> None:
        """A new relay connection to the running process, keeping its MCP session (after the
        transport gave up, e.g. the daemon was unreachable for long)."""
        adopt = self.initialize_result
        await self._disconnect()
        await self._connect(adopt=adopt)

    async def close(self, *, stop: bool | None = None) -> None:
        """Disconnect; stop the process too when ``stop`` (default: ``stop_on_close``)."""
        await self._disconnect()
        self._task_group = None
        if self.stop_on_close if stop is None else stop:
            with contextlib.suppress(BoxManagedProcessNotFoundError, BoxSessionNotFoundError):
                await self.service.stop_process(self.session_id, self.process_id, actor="mcp")

    async def _ensure_process(self, *, replace: bool) -> ManagedProcessInfo:
        wanted = self.spec.process_spec()
        if not replace:
            current = await self._current()
            if current is not None and current.status == ManagedProcessStatus.RUNNING and same_process(current, wanted):
                log.info("MCP server %s: reusing process %s in %s", self.name, self.process_id, self.session_id)
                self.info, self.reused, self.installed = current, True, False
                return current
        await self.service.ensure_session(self.session_id, self.session_request)
        self.installed = await ensure_installed(self.service, self.session_id, self.spec, self.session_request)
        self.info = await self.service.start_process(self.session_id, wanted, self.session_request, actor="mcp")
        self.reused = False
        return self.info

    async def _current(self) -> ManagedProcessInfo | None:
        try:
            return await self.service.client.get_managed_process(self.session_id, self.process_id)
        except (BoxManagedProcessNotFoundError, BoxSessionNotFoundError):
            return None

    async def _connect(self, adopt: types.InitializeResult | None) -> None:
        assert self._task_group is not None
        if self._address is None:
            info = await self.service.client.relay_info()
            self._address = relay_address(info, self.service.link, self.relay_base_url)
        address = self._address
        connection = _Connection(
            address.url(self.session_id, self.process_id),
            address.headers(),
            self.relay_policy,
            self.timing.startup_timeout,
            self._session_options,
            adopt,
        )
        try:
            await self._task_group.start(connection.run)
        except TimeoutError:
            raise await self._startup_failure(connection, "did not answer initialize") from None
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                raise await self._failure(connection) from None
            raise McpRequestError(self.name, "initialize", exc.code, exc.message, exc.data) from None
        except BoxError:
            raise
        except (RuntimeError, pydantic.ValidationError) as exc:  # e.g. a protocol version the SDK does not speak
            raise McpServerError(self.name, f"MCP server {self.name!r} failed to initialize: {exc}") from None
        self._connection = connection
        server = connection.initialize_result.server_info if connection.initialize_result else None
        log.info("MCP server %s connected (%s)", self.name, server.name if server else "adopted")

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    # ── failures ──────────────────────────────────────────────────────────

    async def _failure(self, connection: _Connection) -> BoxError:
        """Why a connection closed, as the typed error a caller can act on."""
        try:
            info = await self.status()
        except (BoxManagedProcessNotFoundError, BoxSessionNotFoundError) as exc:
            return McpServerStoppedError(
                self.name, f"MCP server {self.name!r} is gone ({exc}); start it again to use it"
            )
        if info.status == ManagedProcessStatus.EXITED:
            return McpServerCrashedError(self.name, info)
        why = connection.transport.ended or "the relay closed"
        return McpRelayLostError(
            self.name, f"lost the relay to MCP server {self.name!r}, which still runs: {why}; reconnect() to retry"
        )

    async def _startup_failure(self, connection: _Connection, what: str) -> BoxError:
        error = await self._failure(connection)
        if not isinstance(error, McpRelayLostError):
            return error
        stderr = (self.info.stderr_preview[-1000:].strip() if self.info else "") or "(nothing)"
        return McpTimeoutError(
            self.name,
            f"MCP server {self.name!r} {what} within {self.timing.startup_timeout:g} s; is the command an MCP "
            f"server on stdio? Its stderr so far: {stderr}",
        )

    async def _log_from_server(self, params: types.LoggingMessageNotificationParams) -> None:
        log.info("MCP server %s [%s]: %s", self.name, params.level, params.data)

    # ── requests ──────────────────────────────────────────────────────────

    async def _request(
        self, method: str, call: Callable[[ClientSession], Awaitable[T]], timeout: float | None = None
    ) -> T:
        connection = self._connection
        if connection is None or connection.session is None:
            raise McpServerError(self.name, f"MCP server {self.name!r} is not started")
        limit = self.timing.request_timeout if timeout is None else timeout
        try:
            # Our own limit: the SDK's starts only once the message is written, which waits
            # while the relay is down.
            with anyio.fail_after(limit):
                return await call(connection.session)
        except TimeoutError:
            raise McpTimeoutError(
                self.name, f"MCP server {self.name!r}: {method} got no answer within {limit:g} s"
            ) from None
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                raise await self._failure(connection) from None
            raise McpRequestError(self.name, method, exc.code, exc.message, exc.data) from None
        except BoxError:
            raise
        except (RuntimeError, pydantic.ValidationError) as exc:  # the SDK's checks of what came back
            raise McpServerError(self.name, f"MCP server {self.name!r}: {method} gave a bad answer: {exc}") from None

    async def ping(self, *, timeout: float | None = None) -> None:
        """MCP ``ping``: the server answers."""
        await self._request("ping", lambda s: s.send_ping(), timeout)

    async def list_tools(self, *, timeout: float | None = None) -> list[types.Tool]:
        """Every tool of the server (all pages)."""
        tools: list[types.Tool] = []
        cursor: str | None = None
        while True:
            page = await self._request("tools/list", _page(ClientSession.list_tools, cursor), timeout)
            tools += page.tools
            if not (cursor := page.next_cursor):
                return tools

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> types.CallToolResult:
        """Call tool ``name`` with ``arguments``; the tool's result (``is_error`` for its own failures)."""
        args = dict(arguments) if arguments is not None else None
        return await self._request(f"tools/call {name}", lambda s: s.call_tool(name, args), timeout)

    async def list_resources(self, *, timeout: float | None = None) -> list[types.Resource]:
        """The server's resources; empty when it offers none."""
        if self.capabilities is None or self.capabilities.resources is None:
            return []
        resources: list[types.Resource] = []
        cursor: str | None = None
        while True:
            page = await self._request("resources/list", _page(ClientSession.list_resources, cursor), timeout)
            resources += page.resources
            if not (cursor := page.next_cursor):
                return resources

    async def read_resource(self, uri: str, *, timeout: float | None = None) -> types.ReadResourceResult:
        """Read the resource at ``uri``."""
        return await self._request(f"resources/read {uri}", lambda s: s.read_resource(uri), timeout)

    async def list_prompts(self, *, timeout: float | None = None) -> list[types.Prompt]:
        """The server's prompts; empty when it offers none."""
        if self.capabilities is None or self.capabilities.prompts is None:
            return []
        prompts: list[types.Prompt] = []
        cursor: str | None = None
        while True:
            page = await self._request("prompts/list", _page(ClientSession.list_prompts, cursor), timeout)
            prompts += page.prompts
            if not (cursor := page.next_cursor):
                return prompts

    async def get_prompt(
        self, name: str, arguments: Mapping[str, str] | None = None, *, timeout: float | None = None
    ) -> types.GetPromptResult:
        """The prompt ``name`` filled with ``arguments``."""
        args = dict(arguments) if arguments is not None else None
        return await self._request(f"prompts/get {name}", lambda s: s.get_prompt(name, args), timeout)


P = TypeVar("P")


def _page(method: Callable[..., Awaitable[P]], cursor: str | None) -> Callable[[ClientSession], Awaitable[P]]:
    """One page of a paginated list call."""
    params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
    return lambda session: method(session, params=params)
