"""No exception crosses the protocol edge untyped (issue 16, hardening): a handler's or a
backend's unexpected exception reaches the client as a Box error (and the operator's log with
its traceback), and input the handlers decode themselves is refused as BoxValidationError."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from boxruntime.backends.contract import Command
from boxruntime.errors import BoxError, BoxValidationError
from boxruntime.protocol.envelope import error_message
from tests.fakes import FakeSandbox
from tests.test_runtime import Box, box  # noqa: F401 - fixtures

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_an_unexpected_backend_exception_reaches_the_client_as_a_box_error(
    box: Box,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await box.call("box_create_session", {"session_id": "s"})

    async def explode(handle: FakeSandbox, command: Command, **_: Any) -> Any:
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(box.fake, "run", explode)
    monkeypatch.setattr(box.fake, "start_command", explode)
    with caplog.at_level(logging.ERROR), pytest.raises(BoxError) as unary:
        await box.call("box_exec", {"session_id": "s", "cmd": "true"})
    assert error_message(unary.value).startswith("BoxError: ") and "engine exploded" in str(unary.value)
    assert any(record.exc_info for record in caplog.records), "the traceback is for the operator"
    with pytest.raises(BoxError) as streamed:
        await box.stream("box_exec_stream", {"session_id": "s", "cmd": "true"})
    assert error_message(streamed.value).startswith("BoxError: ")


async def test_base64_that_is_not_ascii_is_a_validation_error(box: Box) -> None:  # noqa: F811
    await box.call("box_create_session", {"session_id": "s"})
    with pytest.raises(BoxValidationError, match="base64"):
        await box.call("box_fs_write", {"session_id": "s", "path": "f", "data": "é", "encoding": "base64"})


def test_an_e2b_template_that_names_no_image_is_a_validation_error() -> None:
    from boxruntime.edges.e2b.sandboxes import sandbox_spec

    with pytest.raises(BoxValidationError, match="image"):
        sandbox_spec("e2b-x", "Not An Image", internet=False)
    assert sandbox_spec("e2b-x", "code-interpreter-v1", internet=False).image == "code-interpreter-v1"
