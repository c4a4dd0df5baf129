"""Uploads from the client (``__file_chunk``): the chunking maths and keys match LangBot's own
``Handler.send_file`` payload for payload, and what ``BoxClient.upload_file`` sends over a real
Peer is what the daemon's real upload store reassembles."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from langbot_plugin.runtime.io.handler import FILE_CHUNK_LENGTH, Handler

from boxruntime.errors import BoxValidationError
from boxruntime.models import check_file_key
from boxruntime.protocol import Peer
from boxruntime.skills.actions import SkillActions
from langbot_bridge import BoxClient
from langbot_bridge.client import FILE_CHUNK_BYTES, file_chunks, upload_key
from tests.test_peer import connection_pair

pytestmark = pytest.mark.anyio

CHUNK = 16 * 1024
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_chunk_size_is_langbots() -> None:
    assert FILE_CHUNK_BYTES == FILE_CHUNK_LENGTH == CHUNK


@pytest.mark.parametrize("size", SIZES)
def test_chunks_cover_the_file_in_order(size: int) -> None:
    data = os.urandom(size)
    chunks = list(file_chunks(data, "k.zip"))
    assert len(chunks) == max(1, -(-size // CHUNK))
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert {(c.chunk_amount, c.file_length, c.file_key) for c in chunks} == {(len(chunks), size, "k.zip")}
    decoded = [base64.b64decode(c.chunk_base64) for c in chunks]
    assert [len(piece) for piece in decoded] == [c.chunk_size for c in chunks]
    assert all(len(piece) == CHUNK for piece in decoded[:-1]) and len(decoded[-1]) <= CHUNK
    assert b"".join(decoded) == data


def test_keys_are_langbots_format_and_new_each_time() -> None:
    data = b"zip bytes"
    key = upload_key(data)
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]{32}\.zip", key)
    assert key.startswith(hashlib.sha256(data).hexdigest()[:16] + "-")
    assert check_file_key(key) == key  # the daemon's rule
    assert upload_key(data) != key
    assert upload_key(data, ".tar.gz").endswith(".tar.gz") and "." not in upload_key(data, "")


class _Recorder:
    """Stands in for LangBot's Handler around its own ``send_file`` (only ``call_action`` is used)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def call_action(self, action: Any, data: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        self.sent.append(data)
        return {}


@pytest.mark.parametrize("size", SIZES)
async def test_payloads_equal_langbots_send_file(size: int) -> None:
    data = os.urandom(size)
    recorder = _Recorder()
    key = await Handler.send_file(recorder, data, "zip")  # type: ignore[arg-type]
    ours = [chunk.model_dump() for chunk in file_chunks(data, key)]
    assert ours == recorder.sent
    # LangBot's key differs only in its random part.
    assert upload_key(data)[:17] == key[:17]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[BoxClient, SkillActions]]:
    """A BoxClient on a Peer whose other end serves the daemon's real skill actions."""
    actions = SkillActions(tmp_path / "skills", tmp_path / "uploads")
    near, far = connection_pair()
    client_peer = Peer(near, name="client")
    daemon_peer = Peer(far, actions.table().wire(), name="daemon")
    async with anyio.create_task_group() as tg:
        tg.start_soon(client_peer.run)
        tg.start_soon(daemon_peer.run)
        yield BoxClient(client_peer), actions
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("size", [1, 3 * CHUNK + 7])
async def test_upload_file_is_reassembled_by_the_daemons_store(
    served: tuple[BoxClient, SkillActions], size: int
) -> None:
    client, actions = served
    data = os.urandom(size)
    key = await client.upload_file(data)
    with actions.uploads.consume(key) as staged:
        assert staged.read_bytes() == data


async def test_an_empty_upload_is_refused_by_the_action_that_reads_it(served: tuple[BoxClient, SkillActions]) -> None:
    client, _ = served
    with pytest.raises(BoxValidationError, match="Uploaded file is empty"):
        await client.install_skill_zip(b"", "empty.zip")
