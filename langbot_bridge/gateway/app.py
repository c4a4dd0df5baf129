"""The gateway: channels in, per-chat turns in the chat's sandbox, replies out.

``Gateway.run()`` owns everything it starts: the store, the link to the daemon, the agent
runner, the channels and their tasks, the HTTP server, the per-chat lanes. Cancelling it stops
the server first (no new messages), then the lanes and channels, then closes the rest; work
that was interrupted is still in the store and resumes on the next start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import aiohttp
import anyio
import anyio.abc

from boxruntime.errors import BoxValidationError
from langbot_bridge.connector import Connector
from langbot_bridge.gateway.agents import AGENTS, AgentDeps, AgentRunner, AgentState
from langbot_bridge.gateway.boxlink import box_target
from langbot_bridge.gateway.channel import Accepted, Channel, ChannelHost, Rejected
from langbot_bridge.gateway.config import GatewayConfig, GatewayConfigError, validate_kind
from langbot_bridge.gateway.diagnostics import Counters
from langbot_bridge.gateway.lanes import Lanes
from langbot_bridge.gateway.messages import ChatRef, Inbound
from langbot_bridge.gateway.outbox import Backoff, Dispatcher
from langbot_bridge.gateway.reply import compose
from langbot_bridge.gateway.server import GatewayServer
from langbot_bridge.gateway.sessions import ChatSessions
from langbot_bridge.gateway.store import HistoryCaps, InboxRow, Retention, Store
from langbot_bridge.gateway.turns import Turns, TurnSettings
from langbot_bridge.service import BoxService
from langbot_bridge.templates import SessionTemplate

log = logging.getLogger(__name__)

UPKEEP_INTERVAL_SEC = 3600.0


class SendError(Exception):
    """A proactive send was refused (unknown channel or target)."""


def build_channels(config: GatewayConfig, host: ChannelHost) -> dict[str, Channel[Any]]:
    from langbot_bridge.channels import CHANNELS

    channels: dict[str, Channel[Any]] = {}
    for section in config.channel:
        kind = CHANNELS.get(section.kind)
        settings = validate_kind(kind.settings, section, f"[[channel]] {section.name}")
        channels[section.name] = kind.build(settings, host)
    return channels


class Gateway:
    """The core; it is the ``ChannelHost`` every channel talks to."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.store = Store(
            config.store_path,
            synchronous=config.store.synchronous,
            file_url_ttl_sec=config.store.file_url_ttl_hours * 3600,
        )
        self.pending: collections.Counter[str] = collections.Counter()  # stored messages not yet answered
        self.channels: dict[str, Channel[Any]] = {}
        self.server: GatewayServer | None = None
        self.started = time.time()
        self._http: aiohttp.ClientSession | None = None
        self._inbox: Lanes | None = None
        self._outbox: Lanes | None = None
        self._dispatcher: Dispatcher | None = None
        self._turns: Turns | None = None
        self._connector: Connector | None = None
        self._agent: AgentRunner | None = None

    # ── ChannelHost ──────────────────────────────────────────────────────

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "the gateway is not running"
        return self._http

    @property
    def box_available(self) -> bool:
        return self._connector is not None and self._connector.available

    @property
    def public_url(self) -> str | None:
        return self.config.server.public_url

    async def accept(self, inbound: Inbound, files: Sequence[bytes] = ()) -> Accepted:
        channel = inbound.chat.channel
        if self.pending[channel] >= self.config.gateway.max_pending_per_channel:
            raise Rejected("overloaded", 503, f"channel {channel} has too many messages waiting; try again later")
        assert self._inbox is not None and self._turns is not None
        # Once asked to store, finish and hand the message over: the ack depends on it.
        with anyio.CancelScope(shield=True):
            started = time.perf_counter()
            claim = await self.store.claim(inbound, files)
            self.counters.time("claim_commit_ms", (time.perf_counter() - started) * 1000)
            if claim.duplicate:
                self.counters.add(channel, "duplicates")
                return Accepted(None, True)
            assert claim.inbox_id is not None
            self.pending[channel] += 1
            self.counters.add(channel, "accepted")
            self._turns.queues.push(inbound.chat.key, InboxRow(claim.inbox_id, inbound))
            self._inbox.kick(inbound.chat.key)
        return Accepted(claim.inbox_id, False)

    async def delivery_result(self, channel: str, platform_id: str, error: str | None, retry: bool) -> None:
        target = self.channels.get(channel)
        assert self._dispatcher is not None
        limit = self._dispatcher.attempts_allowed(target) if target is not None else 1
        verdict = await self.store.delivery_result(channel, platform_id, error, retry, limit)
        if verdict is None:
            self.counters.add(channel, "results_unmatched")
            return
        self.counters.add(channel, "results_ok" if error is None else "results_failed")
        if verdict.state == "dead":
            self.counters.add(channel, "dead_letters")
        if verdict.row is not None:
            self._dispatcher.enqueue([verdict.row], first=True)

    def channel_ready(self, channel: str) -> None:
        assert self._dispatcher is not None and self._outbox is not None
        self._dispatcher.ready.fire(channel)
        for chat_key in self._dispatcher.waiting_chats(channel):
            self._outbox.kick(chat_key)

    def count(self, channel: str, event: str) -> None:
        self.counters.add(channel, event)

    async def backlog(self, channel: str) -> dict[str, int]:
        counts = (await self.store.counts()).get(channel, {})
        return {"pending": counts.get("outbox_pending", 0), "dead": counts.get("outbox_dead", 0)}

    def timing(self, channel: str, name: str, ms: float) -> None:
        self.counters.time(f"{channel}.{name}", ms)

    async def load_state(self, channel: str, key: str) -> str | None:
        return await self.store.load_state(f"channel:{channel}", key)

    async def save_state(self, channel: str, key: str, value: str | None) -> None:
        await self.store.save_state(f"channel:{channel}", key, value)

    # ── operator API ─────────────────────────────────────────────────────

    async def send(self, channel_name: str, target: str, text: str) -> ChatRef:
        """Queue ``text`` for a chat the gateway knows (``POST /admin/send``)."""
        channel = self.channels.get(channel_name)
        if channel is None:
            raise SendError(f"no channel named {channel_name!r}")
        chat = channel.resolve_target(target)
        if chat is None:
            raise SendError(f"channel {channel_name} cannot read the target {target!r}")
        known = await self.store.find_chat(chat)
        if known is None:
            raise SendError(f"target not found in known sessions: {target}")
        parts = compose(known, "", text, [], channel.capabilities, lambda n: self.store.idempotency_key(None, n))
        assert self._dispatcher is not None
        self._dispatcher.enqueue(await self.store.enqueue(parts))
        return known

    # ── running ──────────────────────────────────────────────────────────

    async def run(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status`` gets the HTTP port once everything is up."""
        config = self.config
        async with contextlib.AsyncExitStack() as stack:
            await self.store.open()
            stack.push_async_callback(self._close_store)
            self._http = await stack.enter_async_context(aiohttp.ClientSession())
            self._connector = await stack.enter_async_context(Connector(box_target(config), shutdown_on_close=False))
            service = BoxService(
                self._connector,
                profile=config.box.profile,
                profile_dirs=[config.path(p) for p in config.box.profile_dirs],
                session_template=config.box.template,
                allowed_mount_roots=[config.path(p) for p in config.box.allowed_mount_roots],
                output_limit=config.box.output_limit,
                session_defaults=config.box.session_defaults(),
            )
            sessions = ChatSessions(service, self._connector, config.box.skills)
            agent_kind = AGENTS.get(config.agent.kind)
            agent_settings = validate_kind(agent_kind.settings, config.agent, "[agent]")
            deps = AgentDeps(
                service=service,
                gateway_name=config.gateway.name,
                skills=sessions.skills,
                state=AgentState(self.store, f"agent:{config.agent.kind}"),
            )
            self._agent = await stack.enter_async_context(agent_kind.build(agent_settings, deps))
            self.channels = build_channels(config, self)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # runs before the group waits for its tasks
            self._start_lanes(tg, sessions)
            await self._resume()
            self.server = GatewayServer(self, config.server, self.channels)
            port = await self.server.start()
            stack.push_async_callback(self.server.stop)
            for channel in self.channels.values():
                tg.start_soon(self._run_channel, channel, name=f"channel {channel.name}")
            tg.start_soon(self._upkeep, name="gateway upkeep")
            loop = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
            log.info("gateway %s listening on %s:%d (%s)", config.gateway.name, config.server.host, port, loop)
            task_status.started(port)
            await anyio.sleep_forever()

    def _start_lanes(self, tg: anyio.abc.TaskGroup, sessions: ChatSessions) -> None:
        config = self.config
        assert self._connector is not None and self._agent is not None
        self._dispatcher = Dispatcher(
            self.store,
            self.channels,
            self.counters,
            max_attempts=config.outbox.max_attempts,
            backoff=Backoff(config.outbox.backoff_initial_sec, config.outbox.backoff_max_sec, config.outbox.jitter),
            max_concurrent_sends=config.outbox.max_concurrent_sends,
            public_url=config.server.public_url,
        )
        self._turns = Turns(
            self.store,
            self._connector,
            sessions,
            self._agent,
            self.channels,
            self.counters,
            TurnSettings(
                max_concurrent=config.gateway.max_concurrent_turns,
                timeout_sec=config.gateway.turn_timeout_sec,
                box_wait_sec=config.gateway.box_wait_sec,
                stream_interval_sec=config.gateway.stream_interval_sec,
                history=HistoryCaps(config.store.history_max_messages, config.store.history_max_chars),
            ),
            self.pending,
        )
        self._inbox = Lanes("turns", tg, self._turns.drain)
        self._outbox = Lanes("outbox", tg, self._dispatcher.drain)
        self._dispatcher.lanes = self._outbox
        self._turns.outbox = self._dispatcher

    async def _close_store(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.store.close()

    async def _run_channel(self, channel: Channel[Any]) -> None:
        try:
            await channel.run()
        except Exception:  # one broken channel must not stop the others
            log.exception("channel %s stopped with an error", channel.name)
            self.counters.add(channel.name, "channel_crashes")

    async def _resume(self) -> None:
        """Pick up what a previous run left: unanswered messages and undelivered replies. Runs
        before the server and the channels start, and reads both lists before any lane starts:
        nothing can be queued twice (a turn that ran now would add outbox rows to the list)."""
        assert self._inbox is not None and self._turns is not None and self._dispatcher is not None
        inbox = await self.store.pending_inbox()
        outbox = await self.store.pending_outbox()
        for row in inbox:
            self.pending[row.inbound.chat.channel] += 1
            self._turns.queues.push(row.inbound.chat.key, row)
            self._inbox.kick(row.inbound.chat.key)
        self._dispatcher.enqueue(outbox)

    async def _upkeep(self) -> None:
        store = self.config.store
        retention = Retention(
            dedup_sec=store.dedup_retention_hours * 3600,
            dead_letter_sec=store.dead_letter_retention_hours * 3600,
            file_url_sec=store.file_url_ttl_hours * 3600,
        )
        while True:
            removed = await self.store.prune(retention)
            if removed:
                log.info("pruned %d old rows from the gateway store", removed)
            await anyio.sleep(UPKEEP_INTERVAL_SEC)

    # ── diagnostics ──────────────────────────────────────────────────────

    async def diagnostics(self) -> dict[str, Any]:
        connector = self._connector
        assert connector is not None and self._inbox is not None and self._outbox is not None
        turns = self._turns
        return {
            "gateway": self.config.gateway.name,
            "uptime_sec": round(time.time() - self.started, 1),
            "box": {
                "available": connector.available,
                "reason": None if connector.available else connector.unavailable_reason(),
                "connects": connector.connects,
            },
            "turns": {
                "running": turns.running if turns is not None else 0,
                "chats_busy": len(self._inbox),
                "pending": dict(self.pending),
            },
            "outbox": {"chats_busy": len(self._outbox)},
            "counters": self.counters.snapshot(),
            "timings": self.counters.timings(),
            "store": {
                **(await self.store.counts()),
                "commits": self.store.db.batches,
                "operations": self.store.db.operations,
                "batch_ms": _percentiles(self.store.db.batch_ms),
            },
            "dead_letters": await self.store.dead_letters(20),
            "channels": {
                name: {"kind": c.kind, "ready": c.ready, **c.diagnostics()} for name, c in self.channels.items()
            },
            "agent": {"kind": self.config.agent.kind, **(self._agent.diagnostics() if self._agent else {})},
            "last_errors": list(self.counters.last_errors),
        }


def _percentiles(values: Iterable[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p99": None}
    return {"p50": round(ordered[len(ordered) // 2], 3), "p99": round(ordered[int(len(ordered) * 0.99)], 3)}


def check(config: GatewayConfig) -> None:
    """Fail fast on kinds and settings before anything starts (``boxruntime gateway --check``)."""
    from langbot_bridge.channels import CHANNELS

    validate_kind(AGENTS.get(config.agent.kind).settings, config.agent, "[agent]")
    try:
        SessionTemplate.parse(config.box.template)
    except BoxValidationError as exc:
        raise GatewayConfigError(f"[box] scope: {exc}") from None
    for section in config.channel:
        validate_kind(CHANNELS.get(section.kind).settings, section, f"[[channel]] {section.name}")
    if not config.channel:
        raise GatewayConfigError("no [[channel]] is configured: the gateway would have nothing to serve")
