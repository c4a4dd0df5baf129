"""LangBot 0.5.0a2's real Box client drives the skill actions, unchanged.

Everything goes through their ``ActionRPCBoxClient`` + ``Handler`` + ``WebSocketClientController``
(``langbot-plugin==0.5.0a2``): zips are uploaded with their ``send_file`` (``__file_chunk``) and
errors must arrive as their own ``BoxValidationError``. LangBot's own Box installs a symlink to
/etc/passwd, a 50 MB zip bomb and a 3000-entry zip without complaint; ours must refuse each
and leave the skills directory exactly as it was.

``skills_daemon`` is the one place that decides what the client talks to.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from langbot_plugin.box.actions import LangBotToBoxAction
from langbot_plugin.box.errors import BoxValidationError
from langbot_plugin.entities.io.actions.enums import CommonAction
from langbot_plugin.entities.io.errors import ActionCallError

from integration_tests.daemon import start_daemon
from integration_tests.langbot_client import LangBotLink, over_websocket

pytestmark = [pytest.mark.langbot, pytest.mark.anyio]

MiB = 1024 * 1024
# The keys LangBot 0.5's store reports for a skill (its _PUBLIC_SKILL_FIELDS).
LANGBOT_SKILL_KEYS = {
    "name",
    "display_name",
    "description",
    "instructions",
    "package_root",
    "entry_file",
    "created_at",
    "updated_at",
}


# ── the endpoint ─────────────────────────────────────────────────────────


@contextlib.asynccontextmanager
async def skills_daemon(data_dir: Path) -> AsyncIterator[str]:
    """The ``ws://…/rpc/ws`` URL of a real daemon keeping skills in ``data_dir/skills`` and
    uploads in ``data_dir/uploads``."""
    daemon = start_daemon(data_dir, "--backend", "local")
    try:
        yield daemon.url
    finally:
        daemon.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
async def langbot(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LangBotLink]:
    # LangBot's Handler creates data/temp/lbp under the current directory.
    cwd = tmp_path / "langbot"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    async with skills_daemon(data_dir) as url, over_websocket(url) as link:
        yield link


def skills_dir(data_dir: Path) -> Path:
    return data_dir / "skills"


def contents(path: Path) -> list[str]:
    return sorted(os.listdir(path)) if path.exists() else []


# ── zips, built in memory as a LangBot user's browser would upload them ──


def zip_bytes(files: dict[str, bytes | str], modes: dict[str, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            if modes and name in modes:
                info.create_system = 3
                info.external_attr = modes[name] << 16
            zf.writestr(info, content)
    return buffer.getvalue()


def skill_md(name: str, description: str = "Demo skill") -> str:
    return f"---\nname: {name}\ndescription: {description}\nlicense: MIT\n---\n\n# {name}\n\nUse it.\n"


def demo_zip(name: str = "demo") -> bytes:
    return zip_bytes(
        {f"{name}/SKILL.md": skill_md(name), f"{name}/scripts/run.sh": "#!/bin/sh\necho hi\n"},
        {f"{name}/scripts/run.sh": stat.S_IFREG | 0o755},
    )


MALICIOUS: dict[str, Callable[[], bytes]] = {
    "symlink to /etc/passwd": lambda: zip_bytes(
        {"demo/SKILL.md": skill_md("demo"), "demo/passwd": "/etc/passwd"},
        {"demo/passwd": stat.S_IFLNK | 0o777},
    ),
    "50 MB zip bomb": lambda: zip_bytes({"demo/SKILL.md": skill_md("demo"), "demo/zeros": bytes(50 * MiB)}),
    "3000 entries": lambda: zip_bytes({"demo/SKILL.md": skill_md("demo"), **{f"demo/f{i}": "x" for i in range(3000)}}),
    "zip-slip": lambda: zip_bytes({"demo/SKILL.md": skill_md("demo"), "demo/../../../escape": "x"}),
}


# ── tests ────────────────────────────────────────────────────────────────


async def test_install_list_get_through_their_client(langbot: LangBotLink, data_dir: Path) -> None:
    client = langbot.client
    [installed] = await client.install_skill_zip(demo_zip(), "demo.zip")
    assert set(installed) >= LANGBOT_SKILL_KEYS
    package = skills_dir(data_dir).resolve() / "demo-upload"
    assert installed["package_root"] == str(package)
    assert (installed["name"], installed["description"], installed["entry_file"]) == ("demo", "Demo skill", "SKILL.md")
    assert installed["created_at"].endswith("+00:00")
    assert installed["digest"].startswith("sha256:") and installed["frontmatter"] == {"license": "MIT"}
    assert os.stat(package / "scripts" / "run.sh").st_mode & 0o111

    assert await client.list_skills() == [installed]
    assert await client.get_skill("demo") == installed
    assert await client.get_skill("missing") is None
    assert contents(data_dir / "uploads") == [], "the uploaded zip is consumed"
    assert contents(skills_dir(data_dir)) == ["demo-upload"], "no staging left behind"


async def test_preview_shows_candidates_and_installs_nothing(langbot: LangBotLink, data_dir: Path) -> None:
    bundle = zip_bytes({"pack/alpha/SKILL.md": skill_md("alpha"), "pack/beta/SKILL.md": skill_md("beta")})
    previews = await langbot.client.preview_skill_zip(bundle, "bundle.zip")
    assert [(p["source_path"], p["name"]) for p in previews] == [("alpha", "alpha"), ("beta", "beta")]
    assert [Path(p["package_root"]).name for p in previews] == ["bundle-alpha-upload", "bundle-beta-upload"]
    assert await langbot.client.list_skills() == []

    with pytest.raises(BoxValidationError, match="Multiple skills found"):
        await langbot.client.install_skill_zip(bundle, "bundle.zip")
    [beta] = await langbot.client.install_skill_zip(bundle, "bundle.zip", source_paths=["beta"])
    assert beta["name"] == "beta"
    assert contents(skills_dir(data_dir)) == ["bundle-beta-upload"]
    assert contents(data_dir / "uploads") == []


@pytest.mark.parametrize("kind", sorted(MALICIOUS))
async def test_malicious_zips_are_refused_and_leave_nothing(langbot: LangBotLink, data_dir: Path, kind: str) -> None:
    archive = MALICIOUS[kind]()
    with pytest.raises(BoxValidationError):
        await langbot.client.install_skill_zip(archive, "evil.zip")
    with pytest.raises(BoxValidationError):
        await langbot.client.preview_skill_zip(archive, "evil.zip")
    assert await langbot.client.list_skills() == []
    assert contents(skills_dir(data_dir)) == [], f"{kind}: nothing may be installed or left staged"
    assert contents(data_dir / "uploads") == [], "refused uploads are consumed too"
    assert not (data_dir.parent / "escape").exists()


async def test_skill_files_and_path_escapes(langbot: LangBotLink, data_dir: Path) -> None:
    client = langbot.client
    created = await client.create_skill({"name": "notes", "description": "Take notes", "instructions": "Write.\n"})
    assert (created["name"], created["description"], created["instructions"]) == ("notes", "Take notes", "Write.\n")

    read = await client.read_skill_file("notes", "SKILL.md")
    assert read == {
        "skill": {"name": "notes"},
        "path": "SKILL.md",
        "content": "---\nname: notes\ndescription: Take notes\n---\n\nWrite.\n",
    }
    for escape in ("../../../etc/passwd", "/etc/passwd", "scripts/../../.."):
        with pytest.raises(BoxValidationError, match="path must"):
            await client.read_skill_file("notes", escape)
    with pytest.raises(BoxValidationError, match="path must"):
        await client.write_skill_file("notes", "../outside.txt", "pwned")
    assert not (skills_dir(data_dir) / "outside.txt").exists()

    written = await client.write_skill_file("notes", "refs/guide.md", "guide")
    assert written == {"skill": {"name": "notes"}, "path": "refs/guide.md", "bytes_written": 5}
    listing = await client.list_skill_files("notes")
    assert listing["skill"] == {"name": "notes"} and listing["base_path"] == "."
    assert [(e["path"], e["is_dir"]) for e in listing["entries"]] == [("SKILL.md", False), ("refs", True)]
    assert listing["truncated"] is False

    updated = await client.update_skill("notes", {"display_name": "Notes"})
    assert (updated["display_name"], updated["description"]) == ("Notes", "Take notes")
    with pytest.raises(BoxValidationError, match="Renaming"):
        await client.update_skill("notes", {"name": "renamed"})

    scanned = await client.scan_skill_directory(created["package_root"])
    assert scanned["name"] == "notes" and set(scanned) >= LANGBOT_SKILL_KEYS

    assert await client.delete_skill("notes") is None
    assert await client.get_skill("notes") is None
    assert contents(skills_dir(data_dir)) == []
    with pytest.raises(BoxValidationError, match="not found"):
        await client.delete_skill("notes")


async def test_file_chunk_with_a_traversal_key_is_refused(langbot: LangBotLink, data_dir: Path, tmp_path: Path) -> None:
    """LangBot 0.5's own Box appends to ``<storage>/<file_key>`` unchecked."""
    chunk = {
        "file_key": "../../../escape.zip",
        "file_length": 5,
        "chunk_base64": "cHduZWQ=",
        "chunk_index": 0,
        "chunk_amount": 1,
        "chunk_size": 5,
    }
    with pytest.raises(ActionCallError, match=r"(?s)BoxValidationError: .*file_key must be"):
        await langbot.call(CommonAction.FILE_CHUNK, chunk)
    assert not (tmp_path / "escape.zip").exists() and not (data_dir / "escape.zip").exists()
    # A key nobody uploaded cannot be installed from (nor reach outside the upload directory).
    with pytest.raises(ActionCallError, match="BoxValidationError: no uploaded file"):
        await langbot.call(LangBotToBoxAction.INSTALL_SKILL_ZIP, {"file_key": "never-sent.zip", "filename": "x.zip"})
