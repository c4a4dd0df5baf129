"""Idle suspend: a session nobody has used for ``suspend_idle_sec`` is frozen, and thawed by
its next action (every lease thaws first, runtime/sessions.py) or relay traffic.

Frozen means the backend's freezer (Docker pause; the cgroup v1 freezer for jails): every
process of the sandbox is stopped where it is, uses no CPU, and loses nothing; its memory stays
(CRIU could write it out, but does not work on these machines: README, idle suspend). A session
is idle when no exec, lease or E2B command is in flight and its last use is older than the
threshold; a managed process with a relay client attached keeps its session awake, unless
``suspend_with_relay`` says otherwise (the next relay message then thaws it).
"""

from __future__ import annotations

import datetime as dt
import logging

import anyio

from boxruntime.config import Settings
from boxruntime.models import utcnow
from boxruntime.runtime.sessions import Session, SessionManager

log = logging.getLogger(__name__)

IDLE_CHECK_MAX_SEC = 30.0
IDLE_CHECK_MIN_SEC = 0.5


class Suspender:
    def __init__(self, sessions: SessionManager, settings: Settings) -> None:
        self._sessions = sessions
        self._settings = settings

    def _interval(self) -> float:
        threshold = self._settings.suspend_idle_sec
        if threshold <= 0:
            return IDLE_CHECK_MAX_SEC  # off: look again later (box_init may not change it, a restart may)
        return max(IDLE_CHECK_MIN_SEC, min(IDLE_CHECK_MAX_SEC, threshold / 4))

    async def run(self) -> None:
        """Freeze idle sessions until cancelled by the runtime's owner."""
        while True:
            await anyio.sleep(self._interval())
            if self._settings.suspend_idle_sec > 0:
                try:
                    await self.freeze_idle()
                except Exception:
                    log.exception("freezing idle sessions failed")

    def idle(self, session: Session, cutoff: dt.datetime) -> bool:
        return (
            not session.suspended
            and not session.closing
            and session.active == 0
            and session.last_used_at < cutoff
            and not any(check() for check in session.keepalive)
            and (self._settings.suspend_with_relay or not any(p.attachment for p in session.processes.values()))
            and session.backend.can_freeze()
        )

    async def freeze_idle(self) -> list[str]:
        """Freeze every session idle past the threshold; returns their ids."""
        cutoff = utcnow() - dt.timedelta(seconds=self._settings.suspend_idle_sec)
        frozen = []
        for session in self._sessions.sessions():
            if not self.idle(session, cutoff):
                continue
            async with self._sessions.locked(session.session_id):
                # Again under the lock: it may have been used or removed meanwhile.
                if self._sessions.find(session.session_id) is not session or not self.idle(session, cutoff):
                    continue
                # Marked before the freeze: from here on every lease takes the locked path,
                # which waits for this freeze and then thaws.
                session.suspended = True
                try:
                    await session.backend.freeze(session.handle)
                except Exception as exc:
                    session.suspended = False
                    log.warning("session %s could not be frozen: %s", session.session_id, exc)
                    continue
            frozen.append(session.session_id)
            log.info("session %s frozen (idle since %s)", session.session_id, session.last_used_at.isoformat())
        return frozen
