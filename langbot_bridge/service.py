"""BoxService: what a chat bot calls. It turns a chat and a request into a checked spec and a
call to the daemon, and the daemon's answer into something an LLM can read.

- Profiles: the service's profile gives defaults, locked fields and the longest timeout
  (``langbot_bridge.profiles``).
- Session scope: a session id template over the chat's variables (``langbot_bridge.templates``)
  decides which chats share a sandbox.
- Mount policy: every host mount is checked against the allow-list before anything is sent.
- Output for an LLM: ``truncate_output`` keeps the head and tail of long output.
- Files: ``files`` reads and writes whole files as bytes or text (``session_files``).
- Audit: every exec and managed-process start/stop is appended to the audit log, when one
  is configured; so is every skill change made through ``skills`` (``langbot_bridge.skills``).
- Degradation: while the daemon is unreachable, ``available`` is False and every call raises
  ``BoxRuntimeUnavailableError`` saying why; the tools built on the service go quiet.
"""

from __future__ import annotations

import contextlib
import functools
import shlex
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from boxruntime.errors import BoxError, BoxRuntimeUnavailableError, BoxValidationError
from boxruntime.models import (
    BoxSpec,
    ExecResult,
    InteractiveExecRequest,
    ManagedProcessInfo,
    ManagedProcessSpec,
    OutputChunk,
    RuntimeStatus,
    SessionInfo,
    StartProcessRequest,
    StreamedResult,
    TerminalSize,
)
from langbot_bridge.client import ActionCaller, BoxClient
from langbot_bridge.profiles import BoxProfile, MountPolicy, load_profiles, merge_spec
from langbot_bridge.templates import DEFAULT_TEMPLATE, ChatContext, SessionTemplate

if TYPE_CHECKING:
    from langbot_bridge.audit import AuditEntry, AuditLog
    from langbot_bridge.session_files import SessionFiles
    from langbot_bridge.skills import SkillService

OUTPUT_LIMIT_CHARS = 4000
HEAD_SHARE = 0.6


class RuntimeLink(ActionCaller, Protocol):
    """A link that knows whether it is up: ``Connector`` is one."""

    @property
    def available(self) -> bool:
        """A link to the daemon is up."""

    def unavailable_reason(self) -> str:
        """Why no link is up."""


@dataclass(frozen=True, slots=True)
class Truncated:
    text: str
    cut_chars: int  # 0 when nothing was cut

    @property
    def truncated(self) -> bool:
        """Whether anything was cut."""
        return self.cut_chars > 0


def truncate_output(text: str, limit: int = OUTPUT_LIMIT_CHARS) -> Truncated:
    """At most ``limit`` characters of ``text`` kept: 60 % from the head, 40 % from the tail,
    with a notice between them saying how much was cut (LangBot's shape, reference §D.4)."""
    if len(text) <= limit:
        return Truncated(text, 0)
    head = int(limit * HEAD_SHARE)
    tail = limit - head
    cut = len(text) - head - tail
    notice = f"\n\n... [{cut} characters truncated] ...\n\n"
    return Truncated(text[:head] + notice + (text[-tail:] if tail else ""), cut)


def audit_entry(**fields: Any) -> AuditEntry:
    """An audit log entry (its model is loaded only by services that keep a log)."""
    from langbot_bridge.audit import AuditEntry

    return AuditEntry(**fields)


class BoxService:
    """What a chat bot calls: profiles, session scopes, mount policy, files, output for an LLM, audit."""

    def __init__(
        self,
        link: RuntimeLink,
        *,
        profile: str = "default",
        profiles: Mapping[str, BoxProfile] | None = None,
        profile_dirs: Sequence[Path] = (),
        session_template: str = DEFAULT_TEMPLATE,
        allowed_mount_roots: Sequence[Path | str] = (),
        output_limit: int = OUTPUT_LIMIT_CHARS,
        audit: AuditLog | None = None,
        session_defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.link = link
        self.client = BoxClient(link)
        self.profiles = dict(profiles) if profiles is not None else load_profiles(profile_dirs)
        if profile not in self.profiles:
            known = ", ".join(sorted(self.profiles))
            raise BoxValidationError(f"unknown box profile {profile!r}; known profiles: {known}")
        self.profile = self.profiles[profile]
        self.template = SessionTemplate.parse(session_template)  # a bad template fails at start-up
        self.mounts = MountPolicy(allowed_mount_roots)
        self.output_limit = output_limit
        self.audit = audit
        # Spec fields every request of this service starts from (an image, skill mounts), so a
        # chat's tools always ask for the session the chat was given.
        self.session_defaults: dict[str, Any] = dict(session_defaults or {})

    # Built on first use: most scripts touch neither, and their models cost start-up time.

    @functools.cached_property
    def skills(self) -> SkillService:
        """Install, change and mount skills (audited)."""
        from langbot_bridge import skills

        return skills.SkillService(self.client, self.audit)

    @functools.cached_property
    def files(self) -> SessionFiles:
        """Whole files in this service's sessions, the session created first when needed."""
        from langbot_bridge import session_files

        return session_files.SessionFiles(self)

    # ── availability ────────────────────────────────────────────────────

    @property
    def available(self) -> bool:
        """The daemon is reachable (the tools built on this service offer nothing otherwise)."""
        return self.link.available

    def unavailable_reason(self) -> str | None:
        """Why the daemon is not reachable, or None when it is."""
        return None if self.link.available else self.link.unavailable_reason()

    def require(self) -> None:
        """Raise BoxRuntimeUnavailableError saying why, unless the daemon is reachable."""
        if not self.link.available:
            raise BoxRuntimeUnavailableError(self.link.unavailable_reason())

    # ── specs and scopes ────────────────────────────────────────────────

    def session_id_for(self, chat: ChatContext) -> str:
        """The session id this service's template gives ``chat``."""
        return self.template.render(chat)

    def build_spec(self, session_id: str, request: Mapping[str, Any] | None = None) -> BoxSpec:
        """Profile defaults <- session defaults <- request <- locked fields, timeout clamped,
        mounts checked."""
        spec = merge_spec(self.profile, session_id, {**self.session_defaults, **(request or {})})
        self.mounts.check(spec)
        return spec

    def truncate(self, text: str) -> Truncated:
        """``text`` cut to this service's output limit (head and tail kept)."""
        return truncate_output(text, self.output_limit)

    # ── calls ───────────────────────────────────────────────────────────

    def interactive_request(
        self,
        session_id: str,
        command: str,
        request: Mapping[str, Any] | None = None,
        *,
        stdin: bool = True,
        tty: TerminalSize | None = None,
        no_timeout: bool = False,
    ) -> InteractiveExecRequest:
        """The checked request for a command that takes input or runs on a terminal
        (``client.exec_interactive``); ``no_timeout``: it runs until it exits or is cancelled."""
        spec = self.build_spec(session_id, {**(request or {}), "cmd": command})
        self.require()
        return InteractiveExecRequest(**spec.model_dump(), stdin=stdin, tty=tty, no_timeout=no_timeout)

    async def ensure_session(self, session_id: str, request: Mapping[str, Any] | None = None) -> SessionInfo:
        """The session, created with this service's spec if it does not exist yet (the fs
        actions need an existing session)."""
        spec = self.build_spec(session_id, request)
        self.require()
        return await self.client.create_session(spec)

    async def exec(
        self,
        session_id: str,
        command: str,
        request: Mapping[str, Any] | None = None,
        *,
        chat: ChatContext | None = None,
        actor: str = "bridge",
        audit_command: str | None = None,
    ) -> ExecResult:
        """Run ``command`` in the session; audited as ``audit_command`` when given (a tool's
        summary instead of its whole script)."""
        spec = self.build_spec(session_id, {**(request or {}), "cmd": command})
        self.require()
        started = time.monotonic()
        try:
            result = await self.client.exec(spec)
        except BoxError as exc:
            await self._audit_exec(spec, chat, actor, audit_command, None, started, exc)
            raise
        await self._audit_exec(spec, chat, actor, audit_command, result, started, None)
        return result

    async def exec_stream(
        self,
        session_id: str,
        command: str,
        request: Mapping[str, Any] | None = None,
        *,
        chat: ChatContext | None = None,
        actor: str = "bridge",
    ) -> AsyncGenerator[OutputChunk | StreamedResult, None]:
        """Like ``exec``, streaming output chunks before the result."""
        spec = self.build_spec(session_id, {**(request or {}), "cmd": command})
        self.require()
        started = time.monotonic()
        result: ExecResult | None = None
        error: BoxError | None = None
        stream = self.client.exec_stream(spec)
        try:
            async for item in stream:
                if isinstance(item, StreamedResult):
                    result = item.result
                yield item
        except BoxError as exc:
            error = exc
            raise
        finally:
            with contextlib.suppress(BoxError):
                await stream.aclose()
            await self._audit_exec(spec, chat, actor, None, result, started, error)

    async def _audit_exec(
        self,
        spec: BoxSpec,
        chat: ChatContext | None,
        actor: str,
        audit_command: str | None,
        result: ExecResult | None,
        started: float,
        error: BaseException | None,
    ) -> None:
        if self.audit is None:
            return  # nothing to write to: not even the entry is built
        if result is not None:
            status, exit_code, duration = result.status.value, result.exit_code, result.duration_ms
        else:
            status, exit_code, duration = "error", None, int((time.monotonic() - started) * 1000)
            if error is None:
                error = BoxError("stream ended without a result")
        await self._record(
            audit_entry(
                event="exec",
                actor=actor,
                chat=chat.variables() if chat is not None else {},
                session_id=spec.session_id,
                command=audit_command or spec.cmd,
                status=status,
                exit_code=exit_code,
                duration_ms=duration,
                error=str(error) if error is not None else None,
            )
        )

    async def start_process(
        self,
        session_id: str,
        spec: ManagedProcessSpec,
        request: Mapping[str, Any] | None = None,
        *,
        chat: ChatContext | None = None,
        actor: str = "bridge",
    ) -> ManagedProcessInfo:
        """Start a managed process in the session (created first with this service's spec)."""
        await self.ensure_session(session_id, request)
        entry = audit_entry(
            event="process_start",
            actor=actor,
            chat=chat.variables() if chat is not None else {},
            session_id=session_id,
            process_id=spec.process_id,
            command=shlex.join([spec.command, *spec.args]),
        )
        try:
            info = await self.client.start_managed_process(StartProcessRequest(session_id=session_id, spec=spec))
        except BoxError as exc:
            await self._record(entry.model_copy(update={"status": "error", "error": str(exc)}))
            raise
        await self._record(entry.model_copy(update={"status": info.status.value}))
        return info

    async def stop_process(
        self, session_id: str, process_id: str = "default", *, chat: ChatContext | None = None, actor: str = "bridge"
    ) -> None:
        """Stop a managed process (audited)."""
        self.require()
        entry = audit_entry(
            event="process_stop",
            actor=actor,
            chat=chat.variables() if chat is not None else {},
            session_id=session_id,
            process_id=process_id,
        )
        try:
            await self.client.stop_managed_process(session_id, process_id)
        except BoxError as exc:
            await self._record(entry.model_copy(update={"status": "error", "error": str(exc)}))
            raise
        await self._record(entry.model_copy(update={"status": "stopped"}))

    async def _record(self, entry: AuditEntry) -> None:
        if self.audit is not None:
            await self.audit.record(entry)

    async def status(self) -> RuntimeStatus:
        """The daemon's status."""
        self.require()
        return await self.client.status()

    async def sessions(self) -> list[SessionInfo]:
        """The daemon's live sessions."""
        self.require()
        return await self.client.list_sessions()

    async def delete_session(self, session_id: str) -> None:
        """Remove a session, its sandbox and its private files."""
        self.require()
        await self.client.delete_session(session_id)
