"""``__file_chunk`` staging and the skill action table (payload shapes, error reporting,
uploads consumed by preview/install), driven through the handlers as the Peer calls them."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pydantic
import pytest
from langbot_plugin.box.actions import LangBotToBoxAction

from boxruntime.errors import BoxCapacityExceededError, BoxError, BoxValidationError
from boxruntime.models import FileChunk
from boxruntime.protocol import ActionHandler
from boxruntime.skills.actions import SkillActions
from boxruntime.skills.uploads import STAGED_SUFFIX, UploadLimits, UploadStore
from tests.test_skill_archive import build_zip, skill_md

KiB = 1024
MiB = 1024 * KiB
CHUNK = 16 * KiB


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def upload_dir(tmp_path: Path) -> Path:
    return tmp_path / "uploads"


@pytest.fixture
def uploads(upload_dir: Path, clock: Clock) -> UploadStore:
    return UploadStore(upload_dir, clock=clock)


def langbot_key(data: bytes) -> str:
    """The key LangBot 0.5's Handler.send_file makes."""
    return f"{hashlib.sha256(data).hexdigest()[:16]}-{uuid.uuid4().hex}.zip"


def langbot_chunks(data: bytes, key: str | None = None) -> list[dict[str, Any]]:
    """The ``__file_chunk`` payloads LangBot 0.5's Handler.send_file sends for ``data``."""
    key = langbot_key(data) if key is None else key
    amount = max(1, (len(data) + CHUNK - 1) // CHUNK)
    return [
        {
            "file_key": key,
            "file_length": len(data),
            "chunk_base64": base64.b64encode(data[i * CHUNK : (i + 1) * CHUNK]).decode(),
            "chunk_index": i,
            "chunk_amount": amount,
            "chunk_size": len(data[i * CHUNK : (i + 1) * CHUNK]),
        }
        for i in range(amount)
    ]


def send(uploads: UploadStore, data: bytes, key: str | None = None) -> str:
    payloads = langbot_chunks(data, key)
    for payload in payloads:
        uploads.accept(FileChunk.model_validate(payload))
    return str(payloads[0]["file_key"])


def staged(upload_dir: Path) -> list[str]:
    return sorted(os.listdir(upload_dir)) if upload_dir.exists() else []


# ── UploadStore ─────────────────────────────────────────────────────────


def test_chunks_reassemble_and_are_consumed_once(uploads: UploadStore, upload_dir: Path) -> None:
    data = os.urandom(3 * CHUNK + 123)
    key = send(uploads, data)
    assert stat.S_IMODE(os.stat(upload_dir).st_mode) == 0o700, "staging is private"
    with uploads.consume(key) as path:
        assert path.read_bytes() == data
        assert path.parent == upload_dir and key not in path.name, "the key never becomes a file name"
    assert staged(upload_dir) == []
    with pytest.raises(BoxValidationError, match="no uploaded file"), uploads.consume(key):
        pass


def test_receipt_reports_progress(uploads: UploadStore) -> None:
    payloads = langbot_chunks(os.urandom(CHUNK + 1))
    first = uploads.accept(FileChunk.model_validate(payloads[0]))
    last = uploads.accept(FileChunk.model_validate(payloads[1]))
    assert (first.received_bytes, first.complete) == (CHUNK, False)
    assert (last.received_bytes, last.complete) == (CHUNK + 1, True)


@pytest.mark.parametrize("key", ["../x", "a/b", ".hidden", "a..b", "x" * 256, "", "-lead", "sp ace"])
def test_bad_file_keys_are_refused(key: str) -> None:
    payload = langbot_chunks(b"data", key)[0]
    with pytest.raises(pydantic.ValidationError, match="file_key"):
        FileChunk.model_validate(payload)


def test_ordinary_keys_are_accepted() -> None:
    for key in (langbot_key(b"x"), "ft1_" + "a" * 64 + ".zip", "A", "x" * 255):
        assert FileChunk.model_validate(langbot_chunks(b"x", key)[0]).file_key == key


def test_chunk_index_out_of_range_is_refused() -> None:
    payload = {**langbot_chunks(b"data")[0], "chunk_index": 1, "chunk_amount": 1}
    with pytest.raises(pydantic.ValidationError, match="out of range"):
        FileChunk.model_validate(payload)


def _refused_and_dropped(uploads: UploadStore, upload_dir: Path, payloads: list[dict[str, Any]], match: str) -> None:
    with pytest.raises(BoxValidationError, match=match):
        for payload in payloads:
            uploads.accept(FileChunk.model_validate(payload))
    assert uploads.pending == 0 and staged(upload_dir) == [], "a broken upload is dropped at once"


def test_oversized_chunk_is_refused(uploads: UploadStore, upload_dir: Path) -> None:
    data = os.urandom(CHUNK + 1)
    payload = {**langbot_chunks(data)[0], "chunk_base64": base64.b64encode(data).decode(), "chunk_size": len(data)}
    _refused_and_dropped(uploads, upload_dir, [payload], "larger than 16384 bytes")


def test_out_of_order_chunk_drops_the_upload(uploads: UploadStore, upload_dir: Path) -> None:
    payloads = langbot_chunks(os.urandom(3 * CHUNK))
    _refused_and_dropped(uploads, upload_dir, [payloads[0], payloads[2]], "out of order")


def test_more_bytes_than_announced_are_refused(uploads: UploadStore, upload_dir: Path) -> None:
    payloads = langbot_chunks(os.urandom(2 * CHUNK))
    payloads = [{**p, "file_length": CHUNK + 10} for p in payloads]
    _refused_and_dropped(uploads, upload_dir, payloads, "longer than")


def test_fewer_bytes_than_announced_are_refused(uploads: UploadStore, upload_dir: Path) -> None:
    payload = {**langbot_chunks(b"short")[0], "file_length": 100}
    _refused_and_dropped(uploads, upload_dir, [payload], "ended at 5 bytes")


def test_chunk_size_and_base64_must_be_honest(uploads: UploadStore, upload_dir: Path) -> None:
    _refused_and_dropped(uploads, upload_dir, [{**langbot_chunks(b"abc")[0], "chunk_size": 2}], "chunk_size said 2")
    _refused_and_dropped(uploads, upload_dir, [{**langbot_chunks(b"abc")[0], "chunk_base64": "!!notb64"}], "base64")


def test_files_over_20_mib_are_refused_at_the_first_chunk(uploads: UploadStore, upload_dir: Path) -> None:
    too_long = {**langbot_chunks(b"x")[0], "file_length": 20 * MiB + 1, "chunk_amount": 1281}
    with pytest.raises(BoxValidationError, match="chunk_amount 1281 exceeds 1280"):
        uploads.accept(FileChunk.model_validate(too_long))
    with pytest.raises(BoxValidationError, match="file_length"):
        uploads.accept(FileChunk.model_validate({**too_long, "chunk_amount": 1280}))
    assert staged(upload_dir) == []


def test_second_first_chunk_for_a_key_keeps_the_original(uploads: UploadStore) -> None:
    data = os.urandom(100)
    key = send(uploads, data)
    with pytest.raises(BoxValidationError, match="already exists"):
        send(uploads, b"intruder", key)
    with uploads.consume(key) as path:
        assert path.read_bytes() == data


def test_chunk_without_a_start_is_refused(uploads: UploadStore) -> None:
    payloads = langbot_chunks(os.urandom(2 * CHUNK))
    with pytest.raises(BoxValidationError, match="chunk 0 must come first"):
        uploads.accept(FileChunk.model_validate(payloads[1]))


def test_incomplete_upload_cannot_be_consumed_and_is_removed(uploads: UploadStore, upload_dir: Path) -> None:
    payloads = langbot_chunks(os.urandom(2 * CHUNK))
    uploads.accept(FileChunk.model_validate(payloads[0]))
    with pytest.raises(BoxValidationError, match="incomplete"), uploads.consume(payloads[0]["file_key"]):
        pass
    assert staged(upload_dir) == []


def test_a_leftover_file_under_the_same_key_is_replaced(uploads: UploadStore, upload_dir: Path) -> None:
    key = langbot_key(b"fresh")
    send(uploads, b"stale")  # creates the directory
    leftover = upload_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}{STAGED_SUFFIX}"
    leftover.write_bytes(b"left by an earlier run")
    send(uploads, b"fresh", key)
    with uploads.consume(key) as path:
        assert path.read_bytes() == b"fresh"


def test_staged_total_is_capped(upload_dir: Path, clock: Clock) -> None:
    uploads = UploadStore(upload_dir, UploadLimits(max_staged_bytes=2 * CHUNK), clock=clock)
    send(uploads, os.urandom(CHUNK))
    send(uploads, os.urandom(CHUNK))
    with pytest.raises(BoxCapacityExceededError, match="too many uploads"):
        send(uploads, os.urandom(10))


def test_idle_uploads_expire(uploads: UploadStore, upload_dir: Path, clock: Clock) -> None:
    old = send(uploads, b"old")
    clock.now += 500
    recent = send(uploads, b"recent")
    clock.now += 200  # old: idle 700 s > 600; recent: 200 s
    assert uploads.expire() == 1
    with pytest.raises(BoxValidationError, match="no uploaded file"), uploads.consume(old):
        pass
    with uploads.consume(recent) as path:
        assert path.read_bytes() == b"recent"


def test_expiry_sweeps_orphans_from_an_earlier_run_only(uploads: UploadStore, upload_dir: Path) -> None:
    live = send(uploads, b"live")
    orphan = upload_dir / f"{'0' * 40}{STAGED_SUFFIX}"
    orphan.write_bytes(b"left over")
    fresh_orphan = upload_dir / f"{'1' * 40}{STAGED_SUFFIX}"
    fresh_orphan.write_bytes(b"just written")
    unrelated = upload_dir / "notes.txt"
    unrelated.write_text("not ours")
    an_hour_ago = time.time() - 3600
    for path in (orphan, unrelated, *upload_dir.glob(f"*{STAGED_SUFFIX}")):
        if path != fresh_orphan:
            os.utime(path, (an_hour_ago, an_hour_ago))
    assert uploads.expire() == 1
    assert not orphan.exists()
    assert fresh_orphan.exists() and unrelated.exists()
    with uploads.consume(live) as path:
        assert path.read_bytes() == b"live", "a known upload is never swept, however old its file"


# ── the action table ────────────────────────────────────────────────────


@pytest.fixture
def actions(tmp_path: Path, upload_dir: Path) -> SkillActions:
    return SkillActions(tmp_path / "skills", upload_dir)


@pytest.fixture
def table(actions: SkillActions) -> dict[str, ActionHandler]:
    return actions.table().wire()


async def call(table: dict[str, ActionHandler], action: str, data: dict[str, Any]) -> dict[str, Any]:
    result = table[action](data)
    assert isinstance(result, Awaitable), "skill actions answer once; none of them streams"
    return await result


async def upload(table: dict[str, ActionHandler], data: bytes) -> str:
    payloads = langbot_chunks(data)
    receipts = [await call(table, "__file_chunk", payload) for payload in payloads]
    assert receipts[-1] == {"received_bytes": len(data), "complete": True}
    return str(payloads[0]["file_key"])


def test_table_serves_every_langbot_skill_action(table: dict[str, ActionHandler]) -> None:
    langbot = {a.value for a in LangBotToBoxAction if "skill" in a.value}
    assert len(langbot) == 11
    assert set(table) == langbot | {"__file_chunk"}


@pytest.mark.anyio
async def test_install_flow_payload_shapes(table: dict[str, ActionHandler], tmp_path: Path, upload_dir: Path) -> None:
    archive = build_zip(tmp_path / "demo.zip", {"demo/SKILL.md": skill_md(), "demo/run.py": "print(1)\n"})
    key = await upload(table, archive.read_bytes())
    installed = await call(table, "box_install_skill_zip", {"file_key": key, "filename": "demo.zip"})
    [skill] = installed["skills"]
    assert skill["name"] == "demo" and skill["created_at"].endswith("+00:00")
    assert skill["digest"].startswith("sha256:") and skill["file_count"] == 2
    assert staged(upload_dir) == [], "install consumes the upload"

    assert (await call(table, "box_get_skill", {"name": "demo"})) == {"skill": skill}
    assert (await call(table, "box_get_skill", {"name": "nope"})) == {"skill": None}
    assert (await call(table, "box_list_skills", {})) == {"skills": [skill]}
    scanned = await call(table, "box_scan_skill_directory", {"path": skill["package_root"]})
    assert scanned == skill, "scan answers the skill object itself, unwrapped"

    listing = await call(table, "box_list_skill_files", {"name": "demo", "path": None, "max_entries": 0})
    assert listing == {
        "skill": {"name": "demo"},
        "base_path": ".",
        "entries": [{"path": "SKILL.md", "name": "SKILL.md", "is_dir": False, "size": len(skill_md())}],
        "truncated": True,
    }
    written = await call(table, "box_write_skill_file", {"name": "demo", "path": "notes/a.md", "content": "hi"})
    assert written == {"skill": {"name": "demo"}, "path": "notes/a.md", "bytes_written": 2}
    read = await call(table, "box_read_skill_file", {"name": "demo", "path": "notes/a.md"})
    assert read == {"skill": {"name": "demo"}, "path": "notes/a.md", "content": "hi"}
    assert (await call(table, "box_delete_skill", {"name": "demo"})) == {"deleted": "demo"}
    assert (await call(table, "box_list_skills", {})) == {"skills": []}


@pytest.mark.anyio
async def test_create_and_update_payloads(table: dict[str, ActionHandler]) -> None:
    created = await call(table, "box_create_skill", {"skill": {"name": "notes", "description": "d"}})
    assert set(created) == {"skill"} and created["skill"]["description"] == "d"
    updated = await call(table, "box_update_skill", {"name": "notes", "skill": {"display_name": "Notes"}})
    assert updated["skill"]["display_name"] == "Notes" and updated["skill"]["description"] == "d"


@pytest.mark.anyio
async def test_preview_consumes_the_upload_even_when_it_fails(
    table: dict[str, ActionHandler], tmp_path: Path, upload_dir: Path
) -> None:
    bomb = build_zip(tmp_path / "bomb.zip", {"demo/SKILL.md": skill_md(), "demo/zeros": bytes(10 * MiB)})
    key = await upload(table, bomb.read_bytes())
    with pytest.raises(BoxValidationError, match="zip bomb"):
        await call(table, "box_preview_skill_zip", {"file_key": key})
    assert staged(upload_dir) == []
    with pytest.raises(BoxValidationError, match="no uploaded file"):
        await call(table, "box_install_skill_zip", {"file_key": key, "filename": "bomb.zip"})

    good = build_zip(tmp_path / "good.zip", {"demo/SKILL.md": skill_md()})
    key = await upload(table, good.read_bytes())
    preview = await call(
        table, "box_preview_skill_zip", {"file_key": key, "filename": "good.zip", "source_subdir": None}
    )
    [candidate] = preview["skills"]
    assert (candidate["source_path"], Path(candidate["package_root"]).name) == ("", "good-upload")
    assert staged(upload_dir) == [], "preview consumes the upload too (LangBot deletes it)"


@pytest.mark.anyio
async def test_mutating_failures_are_reported_as_validation_errors(
    table: dict[str, ActionHandler], actions: SkillActions, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BoxValidationError, match="skill"):
        await call(table, "box_create_skill", {})
    with pytest.raises(BoxValidationError, match="not found"):
        await call(table, "box_delete_skill", {"name": "ghost"})

    def denied(*_: Any, **__: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(actions.store, "delete", denied)
    with pytest.raises(BoxValidationError, match="Permission denied"):
        await call(table, "box_delete_skill", {"name": "x"})
    # Listing is not wrapped in LangBot (its PermissionError would cross the edge as is); here
    # no exception crosses it untyped (issue 16): a BoxError that names the original.
    monkeypatch.setattr(actions.store, "list_skills", denied)
    with pytest.raises(BoxError) as caught:
        await call(table, "box_list_skills", {})
    assert type(caught.value) is BoxError
    assert "PermissionError: [Errno 13] Permission denied" in str(caught.value)


@pytest.mark.anyio
async def test_file_chunk_action_refuses_traversal_keys(table: dict[str, ActionHandler], tmp_path: Path) -> None:
    payload = {**langbot_chunks(b"pwned")[0], "file_key": "../../escape"}
    with pytest.raises(BoxValidationError, match="file_key"):
        await call(table, "__file_chunk", payload)
    assert not (tmp_path / "escape").exists()


@pytest.mark.anyio
async def test_cleanup_expires_uploads(tmp_path: Path, upload_dir: Path, clock: Clock) -> None:
    actions = SkillActions(tmp_path / "skills", upload_dir, uploads=UploadStore(upload_dir, clock=clock))
    table = actions.table().wire()
    await upload(table, b"abandoned")
    clock.now += 601
    assert actions.cleanup() == 1
    assert staged(upload_dir) == []
