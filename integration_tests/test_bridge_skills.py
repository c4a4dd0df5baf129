"""Skills through langbot_bridge and ``boxruntime skill …`` against real daemon processes.

The bridge: install from a zip and from a directory, list/show/remove, file reads and writes,
preview, malicious zips refused as ``BoxValidationError`` with nothing installed, every change
audited, and an installed skill mounted into a Docker session and run. The CLI: the same story
against a spawned local daemon (skills kept in its data dir between commands) and against a
remote daemon with a token, ending with ``exec --skill``.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from boxruntime.errors import BoxValidationError
from boxruntime.models import SkillFields, SkillUpdate
from integration_tests.daemon import Daemon, containers_of, start_daemon
from integration_tests.test_bridge_cli import boxruntime, local
from integration_tests.test_langbot_skills import MALICIOUS, demo_zip, skill_md, zip_bytes
from langbot_bridge import AuditLog, BoxService, Connector, RemoteTarget
from langbot_bridge.skills import skill_files, skill_mount, skill_mounts

pytestmark = pytest.mark.docker

RUN_SH = "#!/bin/sh\necho hello from $(basename $(dirname $(dirname $0)))\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def connector(daemon: Daemon) -> AsyncIterator[Connector]:
    async with Connector(RemoteTarget(daemon.url)) as link:
        await link.wait_available(60)
        yield link


def skill_dir(parent: Path, name: str) -> Path:
    """A skill as a developer has it checked out: with VCS, caches and dependencies around it."""
    root = parent / name
    files: dict[str, tuple[str, int]] = {
        "SKILL.md": (skill_md(name), 0o644),
        "scripts/run.sh": (RUN_SH, 0o755),
        ".git/HEAD": ("ref: refs/heads/main\n", 0o644),
        "scripts/__pycache__/run.cpython-311.pyc": ("bytecode", 0o644),
        "node_modules/left-pad/index.js": ("module.exports = 1\n", 0o644),
    }
    for relative, (content, mode) in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(mode)
    os.symlink("../left-pad/index.js", root / "node_modules" / "left-pad" / "bin")  # skipped, never refused
    return root


def skill_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``boxruntime skill …`` on a spawned local daemon, data dir from BOXRUNTIME_DATA_DIR."""
    return boxruntime(data_dir, "skill", *args)


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: its text and permission bits."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            found[path.relative_to(root).as_posix()] = (path.read_text(), stat.S_IMODE(path.stat().st_mode))
    return found


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def contents(path: Path) -> list[str]:
    return sorted(os.listdir(path)) if path.exists() else []


# ── the bridge ──────────────────────────────────────────────────────────


@pytest.mark.anyio
async def test_install_zip_and_directory_then_list_show_edit_remove(
    connector: Connector, daemon: Daemon, tmp_path: Path
) -> None:
    audit_path = tmp_path / "audit.log"
    service = BoxService(connector, audit=AuditLog(audit_path))
    skills, client = service.skills, service.client
    store = (daemon.data_dir / "skills").resolve()

    [alpha] = await skills.install_zip(demo_zip("alpha"), "alpha.zip", actor="op:ann")
    assert (alpha.name, alpha.description, alpha.package_root) == ("alpha", "Demo skill", str(store / "alpha-upload"))

    source = skill_dir(tmp_path, "beta")
    [beta] = await skills.install_path(source, target_suffix="", actor="op:ann")
    assert beta.package_root == str(store / "beta")
    assert tree(store / "beta") == {"SKILL.md": (skill_md("beta"), 0o644), "scripts/run.sh": (RUN_SH, 0o755)}
    assert beta.digest.startswith("sha256:") and beta.digest != alpha.digest
    assert (beta.file_count, beta.total_bytes) == (2, len(skill_md("beta")) + len(RUN_SH))

    assert sorted(s.name for s in await client.list_skills()) == ["alpha", "beta"]
    assert await client.get_skill("beta") == beta
    assert await client.get_skill("gamma") is None
    assert [(e.path, e.is_dir) for e in await skill_files(client, "beta")] == [
        ("SKILL.md", False),
        ("scripts", True),
        ("scripts/run.sh", False),
    ]
    assert (await client.read_skill_file("beta", "scripts/run.sh")).content == RUN_SH

    written = await skills.write_file("beta", "refs/guide.md", "read me", actor="op:ann")
    assert (written.path, written.bytes_written) == ("refs/guide.md", 7)
    assert (store / "beta" / "refs" / "guide.md").read_text() == "read me"
    # Only the fields set are sent: the description survives a display-name change.
    updated = await skills.update("beta", SkillUpdate(display_name="Beta"), actor="op:ann")
    assert (updated.display_name, updated.description) == ("Beta", "Demo skill")
    created = await skills.create(SkillFields(name="notes", description="Take notes"), actor="op:ann")
    assert created.package_root == str(store / "notes")

    await skills.delete("alpha", actor="op:ann")
    assert await client.get_skill("alpha") is None and contents(store) == ["beta", "notes"]
    with pytest.raises(BoxValidationError, match='Skill "alpha" not found'):
        await skills.delete("alpha", actor="op:ann")

    entries = audit_lines(audit_path)
    assert {(e["event"], e["actor"], e["session_id"]) for e in entries} == {("skill_change", "op:ann", None)}
    assert [(e["command"], e["skill"], e["status"]) for e in entries] == [
        ("install alpha.zip", "alpha", "completed"),
        ("install beta.zip", "beta", "completed"),
        ("write refs/guide.md", "beta", "completed"),
        ("update", "beta", "completed"),
        ("create", "notes", "completed"),
        ("delete", "alpha", "completed"),
        ("delete", "alpha", "error"),
    ]
    assert [e["digest"] for e in entries[:2]] == [alpha.digest, beta.digest]
    assert entries[3]["digest"] == updated.digest != beta.digest  # SKILL.md changed
    assert 'Skill "alpha" not found' in entries[-1]["error"]


@pytest.mark.anyio
async def test_preview_installs_nothing_and_a_bundle_needs_a_choice(connector: Connector, daemon: Daemon) -> None:
    service = BoxService(connector)
    bundle = zip_bytes({"pack/alpha/SKILL.md": skill_md("alpha"), "pack/beta/SKILL.md": skill_md("beta")})
    previews = await service.client.preview_skill_zip(bundle, "bundle.zip")
    assert [(p.source_path, p.name, Path(p.package_root).name) for p in previews] == [
        ("alpha", "alpha", "bundle-alpha-upload"),
        ("beta", "beta", "bundle-beta-upload"),
    ]
    assert await service.client.list_skills() == []
    with pytest.raises(BoxValidationError, match="Multiple skills found"):
        await service.skills.install_zip(bundle, "bundle.zip")
    [beta] = await service.skills.install_zip(bundle, "bundle.zip", source_paths=["beta"])
    assert beta.name == "beta"
    assert contents(daemon.data_dir / "skills") == ["bundle-beta-upload"]
    assert contents(daemon.data_dir / "uploads") == [], "every upload was consumed"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["symlink to /etc/passwd", "50 MB zip bomb", "zip-slip"])
async def test_malicious_zips_are_refused_and_leave_nothing(
    connector: Connector, daemon: Daemon, tmp_path: Path, kind: str
) -> None:
    service = BoxService(connector, audit=AuditLog(tmp_path / "audit.log"))
    with pytest.raises(BoxValidationError):
        await service.skills.install_zip(MALICIOUS[kind](), "evil.zip", actor="op:eve")
    assert await service.client.list_skills() == []
    assert contents(daemon.data_dir / "skills") == [] and contents(daemon.data_dir / "uploads") == []
    [entry] = audit_lines(tmp_path / "audit.log")
    assert (entry["command"], entry["skill"], entry["status"], entry["actor"]) == (
        "install evil.zip",
        None,
        "error",
        "op:eve",
    )
    assert entry["error"]


@pytest.mark.anyio
async def test_a_directory_with_a_symlink_is_refused_before_anything_is_sent(
    connector: Connector, daemon: Daemon, tmp_path: Path
) -> None:
    source = skill_dir(tmp_path, "leaky")
    os.symlink("/etc/passwd", source / "scripts" / "passwd")
    service = BoxService(connector, audit=AuditLog(tmp_path / "audit.log"))
    with pytest.raises(BoxValidationError, match=r"contains a symlink, scripts/passwd -> /etc/passwd"):
        await service.skills.install_path(source)
    assert await service.client.list_skills() == []
    assert contents(daemon.data_dir / "skills") == [] and contents(daemon.data_dir / "uploads") == []
    assert audit_lines(tmp_path / "audit.log") == [], "nothing reached the daemon, nothing changed"


@pytest.mark.anyio
async def test_skill_errors_arrive_as_the_daemons_classes(connector: Connector) -> None:
    service = BoxService(connector)
    await service.skills.create(SkillFields(name="notes", description="Take notes"))
    with pytest.raises(BoxValidationError, match="path must"):
        await service.client.read_skill_file("notes", "../../../etc/passwd")
    with pytest.raises(BoxValidationError, match="Renaming"):
        await service.skills.update("notes", SkillUpdate(name="renamed"))
    with pytest.raises(BoxValidationError, match="already exists"):
        await service.skills.create(SkillFields(name="notes"))
    with pytest.raises(BoxValidationError, match="no skill named 'missing' is installed"):
        await skill_mounts(service.client, ["notes", "missing"])


@pytest.mark.anyio
async def test_an_installed_skill_is_mounted_into_a_session_and_runs(
    connector: Connector, daemon: Daemon, tmp_path: Path
) -> None:
    installer = BoxService(connector)
    [skill] = await installer.skills.install_path(skill_dir(tmp_path, "hello"), target_suffix="")
    # The bridge checks mounts against its own allow-list first: allow exactly this package.
    service = BoxService(connector, allowed_mount_roots=[skill.package_root])
    mount = skill_mount(skill)
    assert mount.mount_path == "/workspace/.skills/hello"
    request = {"extra_mounts": [mount.model_dump(mode="json")]}
    ran = await service.exec(
        "sk", "sh /workspace/.skills/hello/scripts/run.sh; touch /workspace/.skills/hello/x", request
    )
    assert ran.stdout.splitlines() == ["hello from hello"]
    assert ran.exit_code != 0 and "Read-only file system" in ran.stderr
    assert await skill_mounts(service.client, ["hello"]) == [mount]
    await service.delete_session("sk")
    assert (Path(skill.package_root) / "scripts" / "run.sh").read_text() == RUN_SH  # mounted, never owned


# ── the CLI ─────────────────────────────────────────────────────────────


def test_cli_against_a_spawned_local_daemon(docker_engine: docker.DockerClient, data_dir: Path, tmp_path: Path) -> None:
    source = skill_dir(tmp_path, "demo")
    installed = skill_cli(data_dir, "install", str(source))
    store = (data_dir / "skills").resolve()
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.startswith(f"installed demo at {store / 'demo'} (2 files, ")
    archive = tmp_path / "download.zip"
    archive.write_bytes(demo_zip("other"))
    renamed = skill_cli(data_dir, "install", str(archive), "--name", "extra")
    assert renamed.returncode == 0, renamed.stderr
    assert renamed.stdout.startswith(f"installed other at {store / 'extra'} ")
    assert "SKILL.md names the skill 'other'" in renamed.stderr

    # Each command spawned its own daemon; the skills stayed in the data dir.
    listed = skill_cli(data_dir, "list")
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "FILES", "BYTES", "UPDATED", "DESCRIPTION"]
    assert [row.split()[:2] for row in rows] == [["demo", "2"], ["other", "2"]]
    shown = skill_cli(data_dir, "show", "demo")
    assert shown.returncode == 0, shown.stderr
    as_json = json.loads(skill_cli(data_dir, "show", "demo", "--json").stdout)
    assert f"digest:       {as_json['skill']['digest']}" in shown.stdout
    assert [f["path"] for f in as_json["files"]] == ["SKILL.md", "scripts", "scripts/run.sh"]
    assert "  scripts/run.sh  " in shown.stdout

    ran = local(data_dir, "exec", "--skill", "demo", "--", "sh", "/workspace/.skills/demo/scripts/run.sh")
    assert (ran.returncode, ran.stdout) == (0, "hello from demo\n"), ran.stderr
    missing = local(data_dir, "exec", "--skill", "nope", "--", "true")
    assert missing.returncode == 125 and "no skill named 'nope' is installed" in missing.stderr

    again = skill_cli(data_dir, "install", str(source))
    assert again.returncode == 125 and "already exists" in again.stderr
    os.symlink("/etc/shadow", source / "shadow")
    linked = skill_cli(data_dir, "install", str(source), "--name", "linked")
    assert linked.returncode == 125 and "contains a symlink, shadow -> /etc/shadow" in linked.stderr
    assert "Traceback" not in linked.stderr

    removed = skill_cli(data_dir, "rm", "demo")
    assert (removed.returncode, removed.stdout) == (0, "removed skill demo\n")
    assert contents(store) == ["extra"]
    for command in (["rm", "demo"], ["show", "demo"]):
        gone = skill_cli(data_dir, *command)
        assert gone.returncode == 125 and "demo" in gone.stderr and gone.stdout == ""
    assert containers_of(data_dir) == []


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def remote(docker_engine: docker.DockerClient, tmp_path: Path, token: str) -> Iterator[Daemon]:
    proc = start_daemon(tmp_path / "remote-data", "--backend", "docker", token=token)
    try:
        yield proc
    finally:
        proc.stop()
        assert containers_of(proc.data_dir) == []


def test_cli_against_a_remote_daemon_with_a_token(remote: Daemon, data_dir: Path, tmp_path: Path, token: str) -> None:
    where = ["--endpoint", remote.url, f"--token={token}"]  # the = form: a token may start with "-"
    archive = tmp_path / "greeter.zip"
    archive.write_bytes(zip_bytes({"greeter/SKILL.md": skill_md("greeter"), "greeter/run.sh": "echo greetings\n"}))
    installed = boxruntime(data_dir, "skill", "install", str(archive), *where)
    assert installed.returncode == 0, installed.stderr
    assert f"at {(remote.data_dir / 'skills' / 'greeter').resolve()} " in installed.stdout
    assert not (data_dir / "skills").exists(), "the remote daemon's store, not a local one"

    listed = boxruntime(
        data_dir, "skill", "list", "--json", "--endpoint", f"127.0.0.1:{remote.port}", BOXRUNTIME_TOKEN=token
    )
    assert [s["name"] for s in json.loads(listed.stdout)] == ["greeter"]
    ran = boxruntime(data_dir, "exec", *where, "--skill", "greeter", "--", "sh", "/workspace/.skills/greeter/run.sh")
    assert (ran.returncode, ran.stdout) == (0, "greetings\n"), ran.stderr

    refused = boxruntime(data_dir, "skill", "rm", "greeter", "--endpoint", remote.url, "--token", "x" * 40)
    assert refused.returncode == 125 and "refused the token (HTTP 401)" in refused.stderr
    removed = boxruntime(data_dir, "skill", "rm", "greeter", *where)
    assert removed.returncode == 0 and json.loads(boxruntime(data_dir, "skill", "list", "--json", *where).stdout) == []
