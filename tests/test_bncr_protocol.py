"""bncr's wire facts (seed 003): the canonical session key, the six target forms, task prefixes."""

from __future__ import annotations

import pytest

from langbot_bridge.channels.bncr_protocol import Route, extract_task, parse_target, route_from_scope

SEED_EXAMPLE = "agent:main:bncr:direct:71713a303a383838383838"  # scope qq:0:888888


def test_the_canonical_session_key_is_the_seeds() -> None:
    route = route_from_scope("qq:0:888888")
    assert route == Route("qq", "0", "888888") and not route.is_group
    assert route.session_key == SEED_EXAMPLE
    assert Route("微信", "群1", "张三").session_key == "agent:main:bncr:direct:" + "微信:群1:张三".encode().hex()


@pytest.mark.parametrize(
    "target",
    [
        SEED_EXAMPLE,
        "agent:main:bncr:group:71713a303a383838383838",
        "bncr:71713a303a383838383838",
        "bncr:g-71713a303a383838383838",
        "bncr:qq:0:888888",
        "bncr:g-qq:0:888888",
        "bncr:71713A303A383838383838",  # upper-case hex is accepted as input
    ],
)
def test_all_six_target_forms_name_the_same_route(target: str) -> None:
    assert parse_target(target) == (Route("qq", "0", "888888"), None)


def test_a_task_suffix_is_kept() -> None:
    assert parse_target(SEED_EXAMPLE + ":task:Build") == (Route("qq", "0", "888888"), "build")


@pytest.mark.parametrize(
    "target",
    [
        "",
        "qq:0:888888",
        "bncr:",
        "bncr:zz",
        "bncr:qq:0",
        "agent:main:bncr:direct:7171",
        "agent:main:bncr:dm:7171",
        "telegram:1",
    ],
)
def test_other_strings_name_no_route(target: str) -> None:
    assert parse_target(target) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#task:foo\nrun it", ("foo", "run it")),
        ("/task:Foo run it", ("foo", "run it")),
        ("/task foo run it", ("foo", "run it")),
        ("#task = x-1 go", ("x-1", "go")),
        ("no task here", (None, "no task here")),
        ("#tasks:foo", (None, "#tasks:foo")),
        ("/task " + "a" * 40 + " long", (None, "/task " + "a" * 40 + " long")),
    ],
)
def test_task_prefixes(text: str, expected: tuple[str | None, str]) -> None:
    assert extract_task(text) == expected


def test_uploads_are_checked_chunk_by_chunk_and_whole() -> None:
    import base64
    import hashlib

    from langbot_bridge.channels.bncr_files import TransferError, Uploads
    from langbot_bridge.channels.bncr_protocol import FileChunk, FileInit

    uploads = Uploads(max_bytes=1000, ttl=3600)
    data = bytes(range(250)) * 2

    def init(transfer: str, size: int = len(data), digest: str = hashlib.sha256(data).hexdigest()) -> FileInit:
        return FileInit(
            transferId=transfer,
            fileName="a/b.bin",
            fileSize=size,
            chunkSize=256,
            totalChunks=-(-size // 256),
            fileSha256=digest,
        )

    def chunk(transfer: str, index: int, piece: bytes, **extra: object) -> FileChunk:
        encoded = base64.b64encode(piece).decode()
        return FileChunk.model_validate(
            {"transferId": transfer, "chunkIndex": index, "size": len(piece), "base64": encoded, **extra}
        )

    assert uploads.init(init("t1"), "Primary")["status"] == "init"
    assert uploads.init(init("t1"), "Primary")["duplicated"] is True
    with pytest.raises(TransferError, match="chunk sha256 mismatch"):
        uploads.chunk(chunk("t1", 0, data[:256], chunkSha256="00" * 32))
    with pytest.raises(TransferError, match="chunk not complete"):
        uploads.complete("t1")
    uploads.chunk(chunk("t1", 0, data[:256]))
    uploads.chunk(chunk("t1", 1, data[256:]))
    done = uploads.complete("t1")
    assert done["size"] == len(data) and done["path"] == "bncr-upload/t1/b.bin"
    finished = uploads.take(done["path"])
    assert finished is not None and finished.data == data and uploads.take(done["path"]) is None  # taken once
    with pytest.raises(TransferError, match="exceeds the 1000-byte limit"):
        uploads.init(init("t2", size=5000), "Primary")
    uploads.init(init("t3", digest="ff" * 32), "Primary")
    uploads.chunk(chunk("t3", 0, data[:256]))
    uploads.chunk(chunk("t3", 1, data[256:]))
    with pytest.raises(TransferError, match="file sha256 mismatch"):
        uploads.complete("t3")
    with pytest.raises(TransferError, match="transfer not found"):
        uploads.chunk(chunk("t3", 0, data[:256]))  # a failed transfer is gone
