"""docs/ARCHITECTURE.md matches the tree: every module or folder it names in backticks exists,
and every package of the daemon is described in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"
SOURCE_FOLDERS = (
    "boxruntime",
    "boxruntime_cli",
    "langbot_bridge",
    "tests",
    "integration_tests",
    "langbot4_tests",
    "bench",
)


def named_paths() -> set[str]:
    """Backticked tokens that name a file or folder (``a/b.py``, ``x.py``, ``docker/``)."""
    found = set()
    for token in re.findall(r"`([^`\s]+)`", DOC.read_text()):
        token = token.split("(")[0]
        if re.fullmatch(r"[\w./]+", token) and (token.endswith(".py") or token.endswith("/")):
            found.add(token)
    for block in re.findall(r"```\n(.*?)```", DOC.read_text(), flags=re.S):  # the layer tree
        for line in block.splitlines():
            for token in re.findall(r"(?:^|\s)([\w/]+(?:\.py|/))(?=\s|$|,)", line):
                if not token.startswith("/"):
                    found.add(token)
    return found


def source_paths() -> list[str]:
    paths = []
    for folder in SOURCE_FOLDERS:
        paths.append(folder + "/")
        for path in (ROOT / folder).rglob("*"):
            if "__pycache__" not in path.parts:
                relative = path.relative_to(ROOT).as_posix()
                paths.append(relative + "/" if path.is_dir() else relative)
    return paths


def test_every_path_the_document_names_exists() -> None:
    paths = source_paths()
    names = named_paths()
    assert len(names) > 40  # the document names modules, not only prose
    missing = sorted(name for name in names if not any(p == name or p.endswith("/" + name) for p in paths))
    assert missing == []


def test_every_daemon_package_is_in_the_document() -> None:
    text = DOC.read_text()
    packages = sorted(
        path.parent.relative_to(ROOT / "boxruntime").as_posix()
        for path in (ROOT / "boxruntime").rglob("__init__.py")
        if path.parent != ROOT / "boxruntime"
    )
    assert packages, "no packages found"
    undescribed = [p for p in packages if f"{p.rsplit('/', 1)[-1]}/" not in text]
    assert undescribed == []


def test_the_readme_points_to_the_document_not_outside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/ARCHITECTURE.md" in readme
    assert "../shared" not in readme
