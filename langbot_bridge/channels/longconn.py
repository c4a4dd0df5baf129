"""What the long-connection channels share (DingTalk Stream, the WeCom AI bot, the QQ gateway):
the reconnect schedule, the link's state for diagnostics, and the loop that runs one link after
another until the channel is told to stop for good.

Reconnect schedule: the first attempt after a drop comes at once (at most ``first_jitter_sec``
later, so a fleet of gateways does not reconnect in lockstep); then ``initial * 2^(n-1)`` capped
at ``maximum``, each plus up to one second of jitter (DingTalk's SDK: ``1 s * 2^n + U(0,1)``,
cap 60 s; WeCom's: base 1 s, cap 30 s). The count starts again once the platform accepted a
link (DingTalk: the ticketed socket opened; WeCom: any frame, the subscribe ack first; QQ: Hello).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
import pydantic

from langbot_bridge.gateway.channel import ChannelSettings

log = logging.getLogger(__name__)


class LinkSettings(ChannelSettings):
    """The reconnect schedule of a long-connection channel (the platform's defaults)."""

    reconnect_initial_sec: float = pydantic.Field(default=1.0, gt=0)
    reconnect_max_sec: float = pydantic.Field(default=60.0, gt=0)
    first_jitter_sec: float = pydantic.Field(default=0.25, ge=0)
    connect_timeout_sec: float = pydantic.Field(default=10.0, gt=0)


class StopChannel(Exception):
    """The platform said not to reconnect (another connection took over, credentials refused
    too often); the message says why and stays in the diagnostics."""


class LinkDropped(Exception):
    """The link ended in a way the platform expects a reconnect after (its own disconnect
    request, missed heartbeats, a close frame)."""


@dataclass(frozen=True, slots=True)
class Reconnect:
    initial: float
    maximum: float
    first_jitter: float

    def delay(self, failures: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before attempt ``failures + 1`` after a drop (``failures`` links in a
        row that failed or carried nothing)."""
        if failures == 0:
            return self.first_jitter * rng()
        return min(self.initial * 2.0 ** (failures - 1), self.maximum) + rng()


@dataclass
class LinkState:
    """The link as the diagnostics show it (never a secret or a message)."""

    state: str = "starting"  # starting, connecting, connected, waiting, stopped
    connects: int = 0
    drops: int = 0
    last_error: str = ""
    connected_at: float | None = None
    since_drop: list[float] = field(default_factory=list)  # seconds from each drop to the next link

    def snapshot(self) -> dict[str, Any]:
        """The fields the channel's diagnostics show."""
        reconnects = sorted(self.since_drop)
        return {
            "state": self.state,
            "connects": self.connects,
            "drops": self.drops,
            "last_error": self.last_error,
            "reconnect_sec_max": round(reconnects[-1], 3) if reconnects else None,
        }


def first_reason(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that ended a link's task group: a ``StopChannel`` wins, then the first
    other one (nested groups flattened)."""
    found: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            found.append(exc)

    walk(group)
    stops = [exc for exc in found if isinstance(exc, StopChannel)]
    return (stops or found or [group])[0]


async def run_links(
    name: str,
    link: Callable[[Callable[[], None]], Awaitable[None]],
    policy: Reconnect,
    state: LinkState,
) -> None:
    """Run ``link(heard)`` again and again: it connects, serves until the link ends, and calls
    ``heard()`` once the platform accepted the link or sent something (which resets the schedule). Returns when
    ``link`` raises ``StopChannel``; any network or protocol error means reconnect."""
    failures = 0
    dropped_at: float | None = None
    while True:
        carried = False

        def heard() -> None:
            nonlocal carried, dropped_at
            if not carried:
                carried = True
                if dropped_at is not None:
                    state.since_drop = [*state.since_drop[-99:], time.monotonic() - dropped_at]
                    dropped_at = None

        state.state = "connecting"
        try:
            try:
                await link(heard)
            except BaseExceptionGroup as group:  # a link's own task group: its first real reason
                raise first_reason(group) from None
            reason = "the platform closed the link"
        except StopChannel as stop:
            state.state = "stopped"
            state.last_error = str(stop)
            log.warning("channel %s stops: %s", name, stop)
            return
        except (LinkDropped, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        state.drops += 1
        state.connected_at = None
        state.last_error = reason[:300]
        failures = 0 if carried else failures + 1
        if dropped_at is None:
            dropped_at = time.monotonic()
        wait = policy.delay(failures)
        state.state = "waiting"
        log.info("channel %s: link lost (%s); reconnecting in %.2f s", name, reason, wait)
        await anyio.sleep(wait)
