"""How boxruntime's settings and a BoxSpec become the e2b SDK's arguments, and what of a spec an
E2B sandbox honours (reference §D.8, LangBot's mapping, and what we do better).

- ``image``: the default image (ours or LangBot's) is the template ``box.e2b.template`` or
  E2B's ``base``; any other image names an E2B template (``e2b template build`` makes one).
- ``network`` off / on: ``allow_internet_access`` False / True (E2B denies all egress when False).
- ``env``: each command's environment, not the sandbox's (env is per exec, as LangBot's client
  expects; LangBot's backend makes it the sandbox's).
- ``workdir``, ``mount_path``, extra mounts: under ``/home/user`` (``paths.py``); host
  directories copied in and back (``workspace_sync.py``).
- ``timeout_sec``: the command's ``Connect-Timeout-Ms``; envd kills it then, the session stays.
- the session's life: the sandbox's ``timeout``, renewed every minute while the session lives.
- ``cpus``, ``memory_mb``, ``pids_limit``, ``read_only_rootfs``, ``workspace_quota_mb``: not
  passed, E2B's API has no such per-sandbox settings (the template decides); ``probe()`` and the
  session's notes say so.

``E2B_API_KEY``, ``E2B_API_URL``, ``E2B_SANDBOX_URL``, ``E2B_DOMAIN`` (or ``box.e2b.*``) go to the
SDK as they are: ``api_url`` is the control plane's URL (LangBot passes it as ``domain``, which
only works for E2B's own domains); with ``sandbox_url`` every envd call goes to that one URL and
names its sandbox in a header, which is how an E2B-compatible server on one address is reached.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any

from boxruntime.config import Settings
from boxruntime.models import LANGBOT_DEFAULT_IMAGE, BoxSpec, NetworkMode

DEFAULT_TEMPLATE = "base"  # E2B's own default template
REQUEST_TIMEOUT_SEC = 30.0  # one control-plane or envd request (not a command: that has its own)
PROBE_TIMEOUT_SEC = 5.0
# Metadata every sandbox of ours carries: how orphan cleanup finds the ones a dead daemon of this
# data dir (on this machine) left, without sending the data dir's path to E2B.
META_MANAGED = "boxruntime.managed"
META_SITE = "boxruntime.site"
META_INSTANCE = "boxruntime.instance"
META_SESSION = "boxruntime.session"


def api_params(settings: Settings, request_timeout: float = REQUEST_TIMEOUT_SEC) -> dict[str, Any]:
    """The SDK's connection parameters (``ApiParams``) from the settings; unset ones are left to
    the SDK's own defaults (E2B's cloud)."""
    params: dict[str, Any] = {"request_timeout": request_timeout}
    for name, value in (
        ("api_key", settings.e2b_api_key),
        ("api_url", settings.e2b_api_url),
        ("sandbox_url", settings.e2b_sandbox_url),
        ("domain", settings.e2b_domain),
    ):
        if value:
            params[name] = value
    return params


def where(settings: Settings) -> str:
    """The server, as a message names it (never the key)."""
    if settings.e2b_api_url:
        return settings.e2b_api_url
    return f"https://api.{settings.e2b_domain or 'e2b.app'}"


def template_for(spec: BoxSpec, settings: Settings) -> str:
    """The E2B template a spec's image stands for."""
    if spec.image in (settings.default_image, LANGBOT_DEFAULT_IMAGE):
        return settings.e2b_template or DEFAULT_TEMPLATE
    return spec.image


def site_id(data_dir: Path) -> str:
    """This machine and data dir, hashed: sandboxes of another machine or data dir sharing the
    same E2B account are never ours to clean up."""
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    raw = f"{machine or socket.gethostname()}\0{data_dir.resolve()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def metadata(settings: Settings, instance_id: str, key: str) -> dict[str, str]:
    return {
        META_MANAGED: "true",
        META_SITE: site_id(settings.data_dir),
        META_INSTANCE: instance_id,
        META_SESSION: key,
    }


def internet(spec: BoxSpec) -> bool:
    return spec.network == NetworkMode.ON


def unenforced_notes(spec: BoxSpec) -> list[str]:
    """What of ``spec`` the sandbox will not honour, in the session's notes."""
    notes = []
    limits = f"cpus={spec.cpus:g}, memory_mb={spec.memory_mb}, pids_limit={spec.pids_limit}"
    notes.append(f"{limits} are not enforced on E2B: the template decides the sandbox's size")
    if spec.read_only_rootfs:
        notes.append("read_only_rootfs is not enforced on E2B: the template's root file system is what it is")
    if spec.workspace_quota_mb > 0:
        notes.append(f"workspace_quota_mb={spec.workspace_quota_mb} is not enforced on E2B")
    return notes


def enforced_limits(settings: Settings) -> dict[str, str]:
    """The backend's answer to "which limits are really enforced" (``probe()``)."""
    return {
        "isolation": "an E2B sandbox (a Firecracker microVM on E2B's cloud; whatever the server runs on an "
        "E2B-compatible one) per session",
        "network": "enforced by the E2B server: network off is allow_internet_access=False (E2B denies all "
        "egress); an E2B-compatible server must honour that flag",
        "cpus": "not enforced: E2B's API has no per-sandbox CPU setting (the template's cpuCount applies)",
        "memory_mb": "not enforced: E2B's API has no per-sandbox memory setting (the template's memoryMB applies)",
        "pids_limit": "not enforced: E2B's API has no process limit",
        "read_only_rootfs": "not enforced: the template's root file system; the session's files are under /home/user",
        "workspace_quota_mb": "not enforced: the sandbox's disk is the template's",
        "timeout": "enforced by envd (Connect-Timeout-Ms): the command is killed at its timeout (SIGKILL to "
        "the process envd started), the session is kept",
        "sandbox lifetime": f"the E2B sandbox timeout is {settings.e2b_timeout_sec} s past the daemon's last "
        "renewal (every minute while the session lives)",
        "paths": "translated: mount paths live under /home/user (/workspace is /home/user/workspace); "
        "$LANGBOT_BOX_WORKSPACE names the real workspace",
        "host mounts": "copied in at start and back after each command and at stop (workspace_sync caps), "
        "not shared live",
    }
