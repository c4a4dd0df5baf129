"""A small stand-in for LangBot 4.11.2's application object (``ap``), enough for its own
``BoxService``, ``BoxRuntimeConnector``, ``RunnerBoxService`` and ``RuntimeMCPSession`` to run
unchanged against our daemon.

What they read of ``ap`` (langbot/pkg/box/*.py, provider/tools/loaders/mcp*.py): ``logger``,
``instance_config.data`` (the ``box:`` and ``mcp:`` sections), ``deployment`` (``mode``,
``multi_workspace_enabled``), ``workspace_service`` (``instance_uuid`` and
``get_execution_binding``, LangBot's placement fence), ``box_service``, and in Cloud mode
``entitlement_resolver``. Everything else of LangBot (database, platforms, LLMs) is absent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import langbot.pkg.core.app  # noqa: F401 - LangBot imports its app first; its loaders rely on that order
from langbot.pkg.api.http.context import ExecutionContext
from langbot.pkg.cloud.entitlements import EntitlementSnapshot
from langbot.pkg.workspace.entities import WorkspaceExecutionBinding
from langbot.pkg.workspace.errors import WorkspaceGenerationMismatchError
from langbot_plugin.api.entities.builtin.platform import message as pm

from langbot4_tests.client07 import INSTANCE

LOGGER = logging.getLogger("langbot4.app")


class WorkspaceServiceStandIn:
    """LangBot's placement authority: each workspace's active generation (1 until moved)."""

    def __init__(self, instance_uuid: str = INSTANCE) -> None:
        self.instance_uuid = instance_uuid
        self.generations: dict[str, int] = {}

    async def get_execution_binding(
        self, workspace_uuid: str | None = None, *, expected_generation: int | None = None, **_: Any
    ) -> WorkspaceExecutionBinding:
        assert workspace_uuid is not None
        generation = self.generations.setdefault(workspace_uuid, 1)
        if expected_generation is not None and expected_generation != generation:
            raise WorkspaceGenerationMismatchError(
                f"Workspace {workspace_uuid!r} generation {generation} does not match expected generation "
                f"{expected_generation}"
            )
        return WorkspaceExecutionBinding(
            instance_uuid=self.instance_uuid,
            workspace_uuid=workspace_uuid,
            placement_generation=generation,
            write_fenced=False,
            state="active",
        )


class EntitlementResolverStandIn:
    """LangBot Cloud's entitlement source: every workspace holds one managed sandbox, but those
    named in ``without_sandbox``."""

    def __init__(self, instance_uuid: str = INSTANCE) -> None:
        self.instance_uuid = instance_uuid
        self.revision = 1
        self.without_sandbox: set[str] = set()

    async def resolve(self, workspace_uuid: str, *, minimum_revision: int = 0, now: int | None = None) -> Any:
        now = int(time.time()) if now is None else now
        return EntitlementSnapshot(
            instance_uuid=self.instance_uuid,
            workspace_uuid=workspace_uuid,
            entitlement_revision=max(self.revision, minimum_revision, 1),
            status="active",
            not_before=0,
            expires_at=now + 3600,
            features={"managed_sandbox": workspace_uuid not in self.without_sandbox},
            limits={"managed_sandbox_sessions": 1},
        )


@dataclass
class InstanceConfig:
    data: dict[str, Any]


@dataclass
class Deployment:
    mode: str = "oss"
    multi_workspace_enabled: bool = False


@dataclass
class LangBotApp:
    instance_config: InstanceConfig
    deployment: Deployment = field(default_factory=Deployment)
    workspace_service: WorkspaceServiceStandIn = field(default_factory=WorkspaceServiceStandIn)
    logger: logging.Logger = LOGGER
    box_service: Any = None
    entitlement_resolver: EntitlementResolverStandIn | None = None


def make_app(box_section: dict[str, Any], *, cloud: bool = False) -> LangBotApp:
    app = LangBotApp(InstanceConfig({"box": box_section, "mcp": {"stdio": {"enabled": True}}}))
    if cloud:
        app.deployment = Deployment(mode="cloud", multi_workspace_enabled=True)
        app.entitlement_resolver = EntitlementResolverStandIn()
    return app


def execution_context(app: LangBotApp, workspace: str) -> ExecutionContext:
    """The context LangBot resolves for a request of ``workspace`` at its active generation."""
    generation = app.workspace_service.generations.setdefault(workspace, 1)
    return ExecutionContext(
        instance_uuid=app.workspace_service.instance_uuid, workspace_uuid=workspace, placement_generation=generation
    )


class QueryStandIn:
    """The parts of a pipeline Query that BoxService and the Runner Box API read."""

    def __init__(self, context: ExecutionContext, query_id: int, message_chain: list[Any] | None = None) -> None:
        self.query_id = query_id
        self.query_uuid = f"query-{query_id}"
        self.instance_uuid = context.instance_uuid
        self.workspace_uuid = context.workspace_uuid
        self.placement_generation = context.placement_generation
        self._execution_context = context
        self.message_chain = pm.MessageChain(message_chain or [])
        self.variables: dict[str, Any] = {}
