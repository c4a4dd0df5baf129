"""LangBot 4.11.2 in its Cloud (multi-workspace) mode drives the daemon: its BoxService with the
admission policy Cloud requires, its SandboxAdmissionController turning entitlements into grants
(reference §D.12, §E.2), over WebSocket with a control token, on nsjail.

At startup LangBot proves it shares the workspace volume with the Box
(``box_verify_shared_workspace`` on a probe it writes) and requires ``nsjail`` to be available;
then each workspace gets one ``global`` sandbox on its tenant directory, admitted by a grant
LangBot installs before every use, and revoked when the entitlement goes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from langbot.pkg.box.service import BoxService
from langbot.pkg.cloud.entitlements import EntitlementUnavailableError
from langbot_plugin.box.errors import BoxAdmissionError
from langbot_plugin.box.models import BoxSpec

from langbot4_tests.client07 import context, tenant_directory
from langbot4_tests.daemon import TOKEN, jails_of, start_ws_daemon
from langbot4_tests.langbot_app import execution_context, make_app

pytestmark = [pytest.mark.anyio]

# What require_cloud_admission_policy accepts: one global session on nsjail, no managed
# process, grants of at most 300 s, a positive workspace quota.
CLOUD_ADMISSION = {"required": True, "workspace_quota_mb": 64}


async def test_langbot_cloud_admits_one_global_sandbox_per_workspace(
    anyio_backend: str,
    data_dir: Path,
    host_root: Path,
    langbot_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    docker_engine: None,
) -> None:
    monkeypatch.setenv("LANGBOT_BOX_CONTROL_TOKEN", TOKEN)  # Cloud refuses a Box without one
    daemon = start_ws_daemon(data_dir, backend="nsjail")
    default = host_root / "default"
    app = make_app(
        {
            "enabled": True,
            "backend": "nsjail",
            "runtime": {"endpoint": daemon.endpoint},
            "local": {
                "host_root": str(host_root),
                "default_workspace": str(default),
                "allowed_mount_roots": [str(host_root)],
            },
            "admission": CLOUD_ADMISSION,
        },
        cloud=True,
    )
    box = BoxService(app)
    app.box_service = box
    try:
        await box.initialize()  # Cloud fails closed: raises unless the Box passed its checks
        assert box.available
        assert box.managed_admission_required

        for workspace in ("ws-a", "ws-b"):
            ctx = execution_context(app, workspace)
            result = await box.execute_in_context(ctx, {"cmd": "pwd && echo cloud > /workspace/cloud.txt"})
            assert result.ok, result.stderr
            assert (result.session_id, result.stdout) == ("global", "/workspace")
            assert (tenant_directory(default, workspace) / "cloud.txt").read_text() == "cloud\n"
            [session] = await box.get_sessions(ctx)
            assert (session["session_id"], session["host_path"]) == (
                "global",
                str(tenant_directory(default, workspace)),
            )
            status = await box.get_status(ctx)
            assert status["available"] is True
            assert status["capacity"]["limit"] == 1

        # ws-a loses its entitlement: LangBot revokes its grant; the runtime drops its sandbox and
        # refuses it even to a direct call, while ws-b goes on.
        app.entitlement_resolver.without_sandbox.add("ws-a")  # type: ignore[union-attr]
        with pytest.raises(EntitlementUnavailableError):
            await box.execute_in_context(execution_context(app, "ws-a"), {"cmd": "true"})
        with pytest.raises(BoxAdmissionError):
            await box.client.execute(BoxSpec(session_id="global", cmd="true"), action_context=context("ws-a"))
        again = await box.execute_in_context(execution_context(app, "ws-b"), {"cmd": "cat cloud.txt"})
        assert again.ok and again.stdout == "cloud"
    finally:
        await box.shutdown()
        daemon.stop()
    assert jails_of(data_dir) == []
