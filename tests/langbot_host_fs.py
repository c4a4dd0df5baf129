"""What LangBot 4.11.2 does to a tenant workspace on the host when it shares the filesystem
with a local Box (reference §E.2, §E.3, §E.6), as LangBot does it: the same calls, modes and
order, from ``langbot/pkg/box/service.py``, ``secure_fs.py`` and
``provider/tools/loaders/mcp_stdio.py``. LangBot runs these as root, in its own process."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW


def tenant_workspace(default_workspace: Path, namespace: str) -> Path:
    """service.py: ``os.makedirs(<default_workspace>/tenants/<ns>, exist_ok=True)`` before the
    spec goes out (umask applies: 0755 under the usual 022)."""
    path = default_workspace / "tenants" / namespace
    os.makedirs(path, exist_ok=True)
    return path


def _open_dir_at(parent_fd: int, name: str, create: bool) -> int:
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode=0o700, dir_fd=parent_fd)
    return os.open(name, _DIRECTORY, dir_fd=parent_fd)


def _remove_entry(parent_fd: int, name: str) -> None:
    try:
        child = os.open(name, _DIRECTORY, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    except OSError:
        os.unlink(name, dir_fd=parent_fd)
        return
    try:
        for entry in os.listdir(child):
            _remove_entry(child, entry)
    finally:
        os.close(child)
    os.rmdir(name, dir_fd=parent_fd)


def _query_dir(root: Path, subdir: str, scope: str) -> int:
    """secure_fs._query_fd(create=True, reset=True): ``<root>/<subdir>`` made 0700 if missing,
    ``<scope>`` removed and made again, 0700."""
    root_fd = os.open(root, _DIRECTORY)
    try:
        subdir_fd = _open_dir_at(root_fd, subdir, create=True)
    finally:
        os.close(root_fd)
    try:
        _remove_entry(subdir_fd, scope)
        return _open_dir_at(subdir_fd, scope, create=True)
    finally:
        os.close(subdir_fd)


def write_inbox(root: Path, scope: str, files: dict[str, bytes]) -> None:
    """secure_fs.write_files(root, 'inbox', scope, files): files created 0600 with O_EXCL."""
    scope_fd = _query_dir(root, "inbox", scope)
    try:
        for name, data in files.items():
            fd = os.open(name, _NEW_FILE, 0o600, dir_fd=scope_fd)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
    finally:
        os.close(scope_fd)


def reset_outbox(root: Path, scope: str) -> None:
    """secure_fs.reset_directory(root, 'outbox', scope), after each collection."""
    os.close(_query_dir(root, "outbox", scope))


def read_outbox(root: Path, scope: str) -> dict[str, bytes]:
    """secure_fs.read_regular_files: regular files only, opened without following links."""
    result = {}
    scope_fd = os.open(root / "outbox" / scope, _DIRECTORY)
    try:
        for name in os.listdir(scope_fd):
            fd = os.open(name, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK, dir_fd=scope_fd)
            with os.fdopen(fd, "rb") as handle:
                result[name] = handle.read()
    finally:
        os.close(scope_fd)
    return result


def stage_mcp_server(root: Path, process_id: str, source: Path) -> str:
    """mcp_stdio._copy_workspace_tree: the server's directory copied to
    ``.mcp/<pid>/workspace`` (runtime directories the sandbox made are kept), with copytree,
    which ends each directory with a chmod to the source's mode. Returns the process cwd."""
    workspace = root / ".mcp" / process_id / "workspace"
    preserved = {".venv", "venv", "env", ".cache", ".tmp", ".langbot"}
    os.makedirs(workspace, exist_ok=True)
    for name in os.listdir(workspace):
        if name in preserved:
            continue
        path = workspace / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    ignored = shutil.ignore_patterns(
        ".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", *sorted(preserved)
    )
    shutil.copytree(source, workspace, symlinks=True, dirs_exist_ok=True, ignore=ignored)
    return f"/workspace/.mcp/{process_id}/workspace"


def mcp_server_source(directory: Path) -> Path:
    """A small Python MCP server project as an operator keeps it: 0755 directories, 0644 files."""
    (directory / "src" / "tool").mkdir(parents=True)
    (directory / "pyproject.toml").write_text('[project]\nname = "tool"\nversion = "0"\n')
    (directory / "src" / "tool" / "__init__.py").write_text("")
    for path in (directory, directory / "src", directory / "src" / "tool"):
        path.chmod(0o755)
    return directory
