"""Output truncation for an LLM's context, and the audit log with size rotation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from langbot_bridge.audit import AuditEntry, AuditLog
from langbot_bridge.service import truncate_output


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_short_output_is_left_alone() -> None:
    for text in ("", "hi", "x" * 4000):
        kept = truncate_output(text)
        assert (kept.text, kept.cut_chars, kept.truncated) == (text, 0, False)


def test_long_output_keeps_60_percent_head_and_40_percent_tail_with_a_notice() -> None:
    text = "".join(f"{i:06d}\n" for i in range(2000))  # 14 000 characters
    kept = truncate_output(text)
    notice = "\n\n... [10000 characters truncated] ...\n\n"
    assert kept.truncated and kept.cut_chars == 10_000
    assert kept.text == text[:2400] + notice + text[-1600:]


def test_limit_is_configurable() -> None:
    kept = truncate_output("abcdefghij", limit=5)
    assert kept.text == "abc\n\n... [5 characters truncated] ...\n\nij"


def entry(n: int) -> AuditEntry:
    return AuditEntry(
        event="exec",
        actor="tool:exec",
        chat={"launcher_type": "group", "sender_id": "42"},
        session_id="group_1",
        command=f"echo {n}",
        status="completed",
        exit_code=0,
        duration_ms=n,
    )


@pytest.mark.anyio
async def test_audit_appends_one_json_line_per_entry(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "logs" / "audit.log")
    for n in range(3):
        await log.record(entry(n))
    lines = (tmp_path / "logs" / "audit.log").read_text().splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first["event"] == "exec" and first["actor"] == "tool:exec"
    assert first["chat"] == {"launcher_type": "group", "sender_id": "42"}
    assert (first["session_id"], first["command"], first["exit_code"], first["duration_ms"]) == (
        "group_1",
        "echo 0",
        0,
        0,
    )
    assert first["time"].endswith("Z")
    assert [json.loads(line)["command"] for line in lines] == ["echo 0", "echo 1", "echo 2"]


@pytest.mark.anyio
async def test_audit_rotates_by_size_and_keeps_whole_lines(tmp_path: Path) -> None:
    line_bytes = len(entry(10).model_dump_json()) + 1
    log = AuditLog(tmp_path / "audit.log", max_bytes=line_bytes * 3, backups=2)
    for n in range(10, 20):  # ten lines, three per file, two backups
        await log.record(entry(n))
    logs = log_files(tmp_path)
    assert sorted(logs) == ["audit.log", "audit.log.1", "audit.log.2"]
    assert all(size <= line_bytes * 3 for size, _ in logs.values())
    # Newest in the live file, older ones shifted up, the oldest dropped.
    assert logs["audit.log"][1] == ["echo 19"]
    assert logs["audit.log.1"][1] == ["echo 16", "echo 17", "echo 18"]
    assert logs["audit.log.2"][1] == ["echo 13", "echo 14", "echo 15"]


def log_files(directory: Path) -> dict[str, tuple[int, list[str]]]:
    """Each file's size and the commands of its lines."""
    return {
        p.name: (p.stat().st_size, [json.loads(line)["command"] for line in p.read_text().splitlines()])
        for p in directory.iterdir()
    }


def test_audit_log_refuses_nonsense_limits(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AuditLog(tmp_path / "a.log", max_bytes=0)
