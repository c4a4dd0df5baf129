"""Chat sessions: the sandbox a chat's turn runs in, made ready once.

The configured skills are looked up on the daemon the first time a turn needs them; their
read-only mounts (``/workspace/.skills/<name>``) then become part of every session the service
asks for, so the agent's tools always address the same session the chat was given. A session
gets its inbox and outbox directories once per daemon connection (a restarted daemon may have
recreated it).
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from boxruntime.errors import BoxValidationError
from boxruntime.models import Skill
from langbot_bridge.connector import Connector
from langbot_bridge.gateway import chatfiles
from langbot_bridge.profiles import MountPolicy
from langbot_bridge.service import BoxService
from langbot_bridge.skills import skill_mounts

MAX_REMEMBERED = 10_000


class ChatSessions:
    def __init__(self, service: BoxService, connector: Connector, skill_names: Sequence[str]) -> None:
        self.service = service
        self.connector = connector
        self.skill_names = list(dict.fromkeys(skill_names))
        self._skills: list[Skill] | None = None
        self._lock = anyio.Lock()
        self._prepared: set[tuple[str, int]] = set()
        self._base_roots = list(service.mounts.roots)
        self._base_mounts = list(service.session_defaults.get("extra_mounts", []))

    async def skills(self) -> list[Skill]:
        """The configured skills (looked up once), their mounts added to the service's defaults."""
        if self._skills is not None:
            return self._skills
        async with self._lock:
            if self._skills is None:
                if not self.skill_names:
                    self._skills = []
                    return self._skills
                skills = [await self._skill(name) for name in self.skill_names]
                mounts = await skill_mounts(self.service.client, self.skill_names)
                self.service.mounts = MountPolicy([*self._base_roots, *(m.host_path for m in mounts)])
                skill_specs = [m.model_dump(mode="json") for m in mounts]
                self.service.session_defaults["extra_mounts"] = [*self._base_mounts, *skill_specs]
                self._skills = skills
        return self._skills

    async def _skill(self, name: str) -> Skill:
        skill = await self.service.client.get_skill(name)
        if skill is None:
            raise BoxValidationError(f"skill {name!r} from [box] skills is not installed on the daemon")
        return skill

    async def prepare(self, session_id: str) -> None:
        await self.skills()
        key = (session_id, self.connector.connects)
        if key in self._prepared:
            return
        await chatfiles.prepare(self.service, session_id)
        if len(self._prepared) >= MAX_REMEMBERED:
            self._prepared.clear()
        self._prepared.add(key)

    def forget(self, session_id: str) -> None:
        self._prepared = {key for key in self._prepared if key[0] != session_id}
