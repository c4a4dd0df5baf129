"""Host directories copied into a sandbox: Python packages for MCP servers, or wheels to install.

A sandbox's default image has python3 but neither pip nor network. The packages a server needs
are installed on the host (``pip install --target DIR …``, for the sandbox's Python version),
and the directory is copied in once: packed as one tar.gz, written with the file actions,
unpacked by python3 inside, under ``<workspace>/.boxruntime/<kind>-<digest>``. The digest covers
every file's path, size and modification time, so an unchanged directory is not copied again
into the same sandbox, and a changed one lands beside the old one.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread

from boxruntime.errors import BoxValidationError
from boxruntime.models import DEFAULT_MOUNT_PATH

if TYPE_CHECKING:
    from langbot_bridge.sandbox.sandbox import Sandbox

STORE = ".boxruntime"
MARKER = ".boxruntime-complete"
UNPACK_TIMEOUT_SEC = 120
# Runs inside the sandbox: unpack, then drop the archive. The "data" filter where the Python
# has it (3.11.4+) refuses anything an archive should not do to the file system.
UNPACK = (
    "import os, sys, tarfile\n"
    "with tarfile.open(sys.argv[1]) as archive:\n"
    "    options = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}\n"
    "    archive.extractall(sys.argv[2], **options)\n"
    "os.remove(sys.argv[1])\n"
)


def _directory(local: Path | str) -> Path:
    root = Path(local).expanduser().resolve()
    if not root.is_dir():
        raise BoxValidationError(f"{local} is not a directory on this host")
    return root


def tree_digest(root: Path) -> str:
    """Identifies a directory's content cheaply: each file's path, size and mtime."""
    digest = hashlib.sha256()
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            info = path.lstat()
            digest.update(f"{path.relative_to(root)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def pack(root: Path) -> bytes:
    """The directory as a tar.gz (fast compression: it only crosses a local link)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        archive.add(root, arcname=".")
    return buffer.getvalue()


async def copy_tree(sandbox: Sandbox, local: Path | str, kind: str) -> str:
    """Copy the host directory ``local`` into the sandbox once; where it is in there."""
    root = await anyio.to_thread.run_sync(_directory, local)
    digest = await anyio.to_thread.run_sync(tree_digest, root)
    workspace = str(sandbox.request.get("mount_path") or DEFAULT_MOUNT_PATH)
    target = posixpath.join(workspace, STORE, f"{kind}-{digest}")
    marker = posixpath.join(target, MARKER)
    if await sandbox.files.exists(marker):
        return target
    archive = await anyio.to_thread.run_sync(pack, root)
    staging = f"{target}.tar.gz"
    await sandbox.files.write(staging, archive)
    timeout = min(UNPACK_TIMEOUT_SEC, sandbox.service.profile.max_timeout_sec)
    unpacked = await sandbox.commands.run(["python3", "-c", UNPACK, staging, target], timeout=timeout)
    if not unpacked.ok:
        raise BoxValidationError(f"could not unpack {local} in the sandbox: {unpacked.stderr.strip()[-500:]}")
    await sandbox.files.write(marker, digest)
    return target


def pip_wheel(wheels: Path | str) -> str | None:
    """The file name of pip's own wheel in a wheel directory, if it has one."""
    found = sorted(p.name for p in Path(wheels).expanduser().glob("pip-*.whl"))
    return found[-1] if found else None
