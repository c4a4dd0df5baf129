"""``boxruntime skill install | list | show | rm``: a daemon's skill store, built on langbot_bridge.

Like ``exec``, each command spawns a local daemon over stdio unless ``--endpoint`` names a
running one (token from ``--token`` or ``BOXRUNTIME_TOKEN``), and failures print one line on
stderr and exit with 125. A spawned daemon keeps skills under its data dir (``<data>/skills``),
so they outlive the command: a later ``skill list`` finds them, and ``exec --skill NAME``
mounts one read-only at /workspace/.skills/NAME.

``install`` takes a .zip or a directory (packed in memory, without .git, __pycache__, .venv and
node_modules; symlinks refused). The package lands in ``<skills>/<name>``, where the name is
``--name`` or the zip's or directory's name; the skill is called what its SKILL.md declares,
or else that name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boxruntime.errors import BoxError
from langbot_bridge.cli.common import connected, connection_options, print_table, run, say

if TYPE_CHECKING:
    from boxruntime.models import Skill

# langbot_bridge is imported inside the commands, as in cli_client: the daemon builds this parser.

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def add_skill_commands(sub: Any) -> None:
    """Register ``skill install | list | show | rm`` on ``boxruntime``'s subparsers."""
    skill = sub.add_parser("skill", help="install, list, show and remove skills (local daemon unless --endpoint)")
    commands = skill.add_subparsers(dest="skill_command", required=True)

    install = commands.add_parser("install", help="install a skill from a .zip or a directory")
    connection_options(install)
    install.add_argument("source", type=Path, help="a .zip file, or a skill directory (with SKILL.md)")
    install.add_argument(
        "--name",
        help="the package's directory in the store, and the skill's name unless its SKILL.md declares one "
        "(default: the zip's or directory's name)",
    )
    install.add_argument(
        "--path",
        action="append",
        default=[],
        dest="paths",
        metavar="SUBPATH",
        help="the skill to take from an archive holding several, as listed in the error (repeatable)",
    )
    install.set_defaults(func=cmd_skill_install)

    listing = commands.add_parser("list", help="the installed skills")
    connection_options(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_skill_list)

    show = commands.add_parser("show", help="one skill: description, digest, files")
    connection_options(show)
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_skill_show)

    remove = commands.add_parser("rm", help="remove a skill from the store")
    connection_options(remove)
    remove.add_argument("name")
    remove.set_defaults(func=cmd_skill_rm)


def _size(skill: Skill) -> str:
    return f"{skill.file_count} file{'s' if skill.file_count != 1 else ''}, {skill.total_bytes} bytes"


# ── install / rm ────────────────────────────────────────────────────────


async def _install(args: argparse.Namespace) -> int:
    from langbot_bridge import BoxClient
    from langbot_bridge.skills import SkillService

    filename = f"{args.name}.zip" if args.name else None
    async with connected(args) as connector:
        # No suffix: `skill install ./demo` is stored as <skills>/demo, not LangBot's demo-upload.
        installed = await SkillService(BoxClient(connector)).install_path(
            args.source, filename=filename, source_paths=args.paths, target_suffix="", actor="cli"
        )
    for skill in installed:
        print(f"installed {skill.name} at {skill.package_root} ({_size(skill)}, {skill.digest})")
        if args.name and skill.name != args.name:
            say(f"note: its SKILL.md names the skill {skill.name!r}; --name {args.name!r} only named its directory")
    return 0


def cmd_skill_install(args: argparse.Namespace) -> int:
    """``boxruntime skill install``: install a skill from a zip or a directory."""
    return run(_install, args)


async def _rm(args: argparse.Namespace) -> int:
    from langbot_bridge import BoxClient
    from langbot_bridge.skills import SkillService

    async with connected(args) as connector:
        await SkillService(BoxClient(connector)).delete(args.name, actor="cli")
    print(f"removed skill {args.name}")
    return 0


def cmd_skill_rm(args: argparse.Namespace) -> int:
    """``boxruntime skill rm``: remove an installed skill."""
    return run(_rm, args)


# ── list / show ─────────────────────────────────────────────────────────


async def _list(args: argparse.Namespace) -> int:
    from langbot_bridge import BoxClient

    async with connected(args) as connector:
        skills = await BoxClient(connector).list_skills()
    if args.json:
        print(json.dumps([skill.model_dump(mode="json") for skill in skills], indent=2))
    elif skills:
        rows = [["NAME", "FILES", "BYTES", "UPDATED", "DESCRIPTION"]]
        for skill in sorted(skills, key=lambda s: s.name):
            updated = skill.updated_at.strftime(DATE_FORMAT)
            rows.append([skill.name, str(skill.file_count), str(skill.total_bytes), updated, skill.description])
        print_table(rows)
    else:
        print("no skills installed")
    return 0


def cmd_skill_list(args: argparse.Namespace) -> int:
    """``boxruntime skill list``: the installed skills."""
    return run(_list, args)


async def _show(args: argparse.Namespace) -> int:
    from langbot_bridge import BoxClient
    from langbot_bridge.skills import skill_files

    async with connected(args) as connector:
        client = BoxClient(connector)
        skill = await client.get_skill(args.name)
        if skill is None:
            raise BoxError(f"no skill named {args.name!r} is installed (boxruntime skill list shows them)")
        files = await skill_files(client, args.name)
    if args.json:
        dumped = {"skill": skill.model_dump(mode="json"), "files": [entry.model_dump() for entry in files]}
        print(json.dumps(dumped, indent=2))
        return 0
    fields = [
        ("name", skill.name),
        ("display name", skill.display_name),
        ("description", skill.description),
        ("package root", skill.package_root),
        ("entry file", skill.entry_file),
        ("digest", skill.digest),
        ("size", _size(skill)),
        ("created", skill.created_at.strftime(DATE_FORMAT)),
        ("updated", skill.updated_at.strftime(DATE_FORMAT)),
    ]
    if skill.frontmatter:
        fields.append(("frontmatter", json.dumps(skill.frontmatter, ensure_ascii=False, default=str)))
    for label, value in fields:
        print(f"{label + ':':<14}{value}")
    print("files:")
    rows = [
        [f"  {entry.path}/" if entry.is_dir else f"  {entry.path}", "" if entry.size is None else str(entry.size)]
        for entry in files
    ]
    if rows:
        print_table(rows)
    return 0


def cmd_skill_show(args: argparse.Namespace) -> int:
    """``boxruntime skill show``: one skill, and its files."""
    return run(_show, args)
