"""The LangBot instance this daemon serves (reference §A.9): pinned by configuration
(``LANGBOT_BOX_TRUSTED_INSTANCE_UUID``) or by the first client that identifies itself (trust on
first use), then required of every 0.7 connection, request and relay. And the relay's placement
headers.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from boxruntime.tenancy.placement import MAX_WORKSPACE_ID_CHARS, Placement, Workspace, normalize_instance_id

INSTANCE_HEADER = "X-LangBot-Instance-Id"
WORKSPACE_HEADER = "X-LangBot-Workspace-Id"
GENERATION_HEADER = "X-LangBot-Placement-Generation"


class TrustedInstance:
    def __init__(self, pinned: str | None = None) -> None:
        self._value = pinned

    @property
    def value(self) -> str | None:
        return self._value

    def admit(self, instance_id: str, *, pin: bool) -> bool:
        """Is ``instance_id`` the trusted instance? With ``pin``, an unpinned daemon pins it."""
        if self._value is None:
            if pin:
                self._value = instance_id
            return pin
        return hmac.compare_digest(self._value.encode(), instance_id.encode())


class Untrusted(Exception):
    """The request names no trusted LangBot instance where one is needed (HTTP 401)."""


def admit_header(headers: Mapping[str, str], trust: TrustedInstance, *, required: bool, pin: bool) -> str | None:
    """The LangBot instance a request names in its header (pinning it on first use when ``pin``),
    or None when it names none and none is ``required``. Untrusted when it names a malformed or
    an untrusted instance, or none where one is required."""
    raw = headers.get(INSTANCE_HEADER)
    if raw is None and not required:
        return None
    try:
        instance = normalize_instance_id(raw or "")
    except ValueError:
        raise Untrusted("malformed or missing LangBot instance id") from None
    if not trust.admit(instance, pin=pin):
        raise Untrusted("LangBot instance is not the trusted one")
    return instance


def relay_placement(headers: Mapping[str, str], instance_id: str) -> Placement | None:
    """The placement a relay request names in its headers, or None when they are not valid:
    a workspace of 1..256 characters and a canonical decimal generation ≥ 1."""
    workspace_id = headers.get(WORKSPACE_HEADER, "").strip()
    raw_generation = headers.get(GENERATION_HEADER, "").strip()
    if not workspace_id or len(workspace_id) > MAX_WORKSPACE_ID_CHARS:
        return None
    if not raw_generation.isdigit() or raw_generation != str(int(raw_generation)):
        return None  # "01", "+1", " 1" are not canonical: LangBot refuses them too
    generation = int(raw_generation)
    if generation < 1:
        return None
    return Placement(Workspace(instance_id, workspace_id), generation)
