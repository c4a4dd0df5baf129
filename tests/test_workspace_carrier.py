"""The carrier check: a carrier not seen from inside its sandbox switches carriers off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from boxruntime.backends.common import host_mounts
from boxruntime.backends.docker import workspace_carrier
from boxruntime.errors import BoxSandboxError


@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    workspace_carrier._unreachable.clear()
    yield
    workspace_carrier._unreachable.clear()


def test_a_carrier_seen_inside_changes_nothing() -> None:
    workspace_carrier.verified(True, "unused")
    assert workspace_carrier.supported() == host_mounts.can_mount()


def test_a_carrier_not_seen_inside_is_refused_and_switches_carriers_off() -> None:
    with pytest.raises(BoxSandboxError, match="does not reach the sandbox: another namespace"):
        workspace_carrier.verified(False, "another namespace")
    assert workspace_carrier.supported() is False


def test_probe_names_are_hidden_and_unique() -> None:
    names = {workspace_carrier.probe_name() for _ in range(50)}
    assert len(names) == 50 and all(name.startswith(".boxruntime-carrier-probe-") for name in names)
