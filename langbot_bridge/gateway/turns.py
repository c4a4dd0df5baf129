"""Running the turns: one lane per chat takes the chat's stored messages oldest first.

A turn: wait (a while) for the daemon, make the chat's session ready, put the message's files
into ``/workspace/inbox/``, run the agent, take the files it left in ``/workspace/outbox/``,
then store the reply, mark the message done and append the history in one transaction, and
wake the chat's outbox lane. A gateway stopped or killed before that transaction runs the turn
again after a restart; after it, only the outbox is left to do. So an acked message is answered
exactly once (its command may have run twice, if the gateway died in between).

Failures of the box or the agent become the reply; the user always hears back.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from boxruntime.errors import BoxError
from langbot_bridge.connector import Connector
from langbot_bridge.gateway import chatfiles
from langbot_bridge.gateway.agents import AgentReply, AgentRunner, TurnInput, failure_reply
from langbot_bridge.gateway.channel import Channel
from langbot_bridge.gateway.diagnostics import Counters
from langbot_bridge.gateway.lanes import ChatQueues, Lane
from langbot_bridge.gateway.messages import Inbound, StreamFrame
from langbot_bridge.gateway.outbox import Dispatcher
from langbot_bridge.gateway.reply import compose
from langbot_bridge.gateway.sessions import ChatSessions
from langbot_bridge.gateway.store import HistoryCaps, InboxRow, Store, TurnAlreadyCompleted

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TurnSettings:
    max_concurrent: int
    timeout_sec: float
    box_wait_sec: float
    stream_interval_sec: float
    history: HistoryCaps


class ChatStream:
    """Partial replies for a streaming channel, at most one frame per interval; errors end
    the stream quietly (the final reply still goes through the outbox)."""

    def __init__(self, channel: Channel[Any], inbound: Inbound, turn: str, enabled: bool, interval: float) -> None:
        self.channel = channel
        self.inbound = inbound
        self.turn = turn
        self._enabled = enabled
        self.interval = interval
        self.frames = 0
        self._last = 0.0

    @property
    def enabled(self) -> bool:
        return self._enabled

    async def update(self, text: str) -> None:
        now = time.monotonic()
        if not self._enabled or not text or now - self._last < self.interval:
            return
        self._last = now
        frame = StreamFrame(self.inbound.chat, self.inbound.reply_to, self.turn, self.frames + 1, text)
        try:
            await self.channel.stream(frame)
        except Exception as exc:
            log.warning("streaming to %s failed, the rest of the turn is not streamed: %s", self.channel.name, exc)
            self._enabled = False
            return
        self.frames += 1


def prompt_for(inbound: Inbound, paths: list[str]) -> str:
    lines = [inbound.text] if inbound.text else []
    if inbound.note:
        lines.append(f"[{inbound.note}]")
    for meta, path in zip(inbound.files, paths, strict=True):
        lines.append(f"[file {path} ({meta.mime_type}, {meta.size} bytes)]")
    return "\n".join(lines)


class Turns:
    def __init__(
        self,
        store: Store,
        connector: Connector,
        sessions: ChatSessions,
        agent: AgentRunner,
        channels: Mapping[str, Channel[Any]],
        counters: Counters,
        settings: TurnSettings,
        pending: collections.Counter[str],
    ) -> None:
        self.store = store
        self.connector = connector
        self.sessions = sessions
        self.service = sessions.service
        self.agent = agent
        self.channels = channels
        self.counters = counters
        self.settings = settings
        self.pending = pending  # per channel: stored messages not answered yet (the flood limit)
        self.queues: ChatQueues[InboxRow] = ChatQueues(lambda row: row.id)
        self.outbox: Dispatcher | None = None  # set by the gateway: takes each stored reply
        self._slots = anyio.CapacityLimiter(settings.max_concurrent)
        self.running = 0

    async def drain(self, lane: Lane) -> None:
        """The lane's work: the chat's stored messages, in order, until none is left. A message
        leaves the queue only once its turn is complete; one whose turn failed stays first."""
        queue = self.queues.queue(lane.key)
        while queue:
            async with self._slots:
                self.running += 1
                try:
                    await self._turn(queue[0])
                finally:
                    self.running -= 1
            self.queues.pop_first(lane.key)
        self.queues.release(lane.key)

    async def _turn(self, row: InboxRow) -> None:
        inbound = row.inbound
        chat = inbound.chat
        channel = self.channels.get(chat.channel)
        if channel is None:
            log.warning("message %d came from channel %r, which is no longer configured; dropped", row.id, chat.channel)
            await self.store.complete_turn(row.id, chat.key, [], None, self.settings.history)
            self.pending[chat.channel] = max(0, self.pending[chat.channel] - 1)
            return
        started = time.monotonic()
        context = chat.context()
        session_id = ""
        files: list[chatfiles.Collected] = []
        stream = ChatStream(channel, inbound, f"{self.store.salt}-{row.id}", False, self.settings.stream_interval_sec)
        try:
            session_id = self.service.session_id_for(context)
            reply, files, stream = await self._run(row, channel, session_id)
        except BoxError as exc:
            self.counters.add(chat.channel, "turn_errors")
            self.counters.error(f"turn {chat.channel}", str(exc))
            reply = AgentReply(failure_reply("the sandbox", exc))
        parts = compose(
            chat,
            inbound.reply_to or inbound.message_id,
            reply.text,
            files,
            channel.capabilities,
            lambda position: self.store.idempotency_key(row.id, position),
            first_sequence=stream.frames + 1,
        )
        try:
            queued = await self.store.complete_turn(row.id, chat.key, parts, reply.history, self.settings.history)
        except TurnAlreadyCompleted:  # never expected: queues admit a message once; if it happens, do not repeat
            log.exception("message %d was answered already; this answer is dropped", row.id)
            return
        self.pending[chat.channel] = max(0, self.pending[chat.channel] - 1)
        self.counters.add(chat.channel, "turns")
        self.counters.add(chat.channel, "turn_ms", int((time.monotonic() - started) * 1000))
        if self.outbox is not None:
            self.outbox.enqueue(queued)
        if files and session_id:
            await chatfiles.drop_staging(self.service, session_id, row.id)

    async def _run(
        self, row: InboxRow, channel: Channel[Any], session_id: str
    ) -> tuple[AgentReply, list[chatfiles.Collected], ChatStream]:
        inbound = row.inbound
        if not self.connector.available:  # a restarting daemon: wait a while before answering with an error
            await self.connector.wait_available(self.settings.box_wait_sec)
        await self.sessions.prepare(session_id)
        paths: list[str] = []
        if inbound.files:
            blobs = await self.store.inbox_files(row.id)
            paths = await chatfiles.put_inbound(self.service, session_id, inbound.files, blobs)
        history = await self.store.history(inbound.chat.key) if self.agent.uses_history else []
        # Stream only when nothing of this chat is still waiting to be sent: frames must not
        # overtake an earlier reply.
        streams = channel.capabilities.streaming and not (
            self.outbox is not None and self.outbox.busy(inbound.chat.key)
        )
        stream = ChatStream(channel, inbound, f"{self.store.salt}-{row.id}", streams, self.settings.stream_interval_sec)
        turn = TurnInput(inbound, inbound.chat.context(), session_id, prompt_for(inbound, paths), stream, history)
        reply: AgentReply | None = None
        with anyio.move_on_after(self.settings.timeout_sec):
            try:
                reply = await self.agent.run(turn)
            except BoxError:
                raise
            except Exception as exc:  # a runner bug still gets the user an answer
                log.exception("the agent failed on message %d", row.id)
                reply = AgentReply(failure_reply("the agent", exc))
        if reply is None:
            reply = AgentReply(f"Sorry, no answer within {self.settings.timeout_sec:g} s.")
        try:
            files = await chatfiles.take_outbox(self.service, session_id, row.id, channel.capabilities.max_file_bytes)
        except BoxError as exc:  # the answer still goes out; the files wait for the next turn
            log.warning("could not collect the outbox of session %s: %s", session_id, exc)
            self.sessions.forget(session_id)  # set it up again next time (a recreated session)
            note = f"[files in {chatfiles.OUTBOX_DIR} could not be sent: {exc}]"
            return AgentReply(f"{reply.text}\n{note}", reply.history), [], stream
        return reply, files, stream
