"""A preloaded shim that lets ``ls`` and ``stat`` work under Debian's runsc (20221219).

That gVisor refuses ``AT_NO_AUTOMOUNT`` in ``statx`` and ``fstatat`` with EINVAL, and coreutils
9 passes it on every call: ``ls /tmp``, ``ls -l``, ``stat``, ``du``, ``cp -a`` all fail with
"Invalid argument" (measured: README "gVisor"). Later gVisor releases accept the flag. It asks
the kernel not to trigger an automount, and gVisor has no automounts: dropping it changes
nothing else. So every gvisor sandbox gets ``/etc/ld.so.preload`` naming this shim, which drops
the flag and makes the same system call (through ``syscall``, so it needs nothing newer than
glibc 2.2.5 from the image). musl and static programs ignore the preload; they do not use the
flag either.

The shim is compiled with the host's C compiler once per version into the data dir (like the
agent's scripts: a containerised daemon's engine finds it there). Without a compiler the
sandboxes work without it, and their notes say what fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from docker.types import Mount

SHIM_DIR_IN_SANDBOX = "/opt/boxruntime-gvisor"
SOURCE = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>
struct stat;
struct statx;
int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf) {
    return (int)syscall(SYS_statx, dirfd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
}
int fstatat(int dirfd, const char *path, struct stat *buf, int flags) {
    return (int)syscall(SYS_newfstatat, dirfd, path, buf, flags & ~AT_NO_AUTOMOUNT);
}
int fstatat64(int dirfd, const char *path, struct stat *buf, int flags) {
    return (int)syscall(SYS_newfstatat, dirfd, path, buf, flags & ~AT_NO_AUTOMOUNT);
}
"""
MISSING_NOTE = (
    "no C compiler on the daemon's host to build the statx shim: under this runsc, coreutils' ls, stat, du "
    "and cp -a fail with 'Invalid argument' (install gcc and restart the daemon)"
)


def build(data_dir: Path) -> Path | None:
    """The shim's directory (``statx.so`` and the ``ld.so.preload`` naming it), built if
    needed; None where no C compiler is found."""
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    target = data_dir / "gvisor" / digest
    if (target / "statx.so").exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    staging = data_dir / "gvisor" / f".{digest}.{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "statx.c").write_text(SOURCE)
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(staging / "statx.so"), str(staging / "statx.c")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (staging / "ld.so.preload").write_text(f"{SHIM_DIR_IN_SANDBOX}/statx.so\n")
    for path in (staging, *staging.iterdir()):
        path.chmod(0o755 if path.is_dir() or path.suffix == ".so" else 0o644)
    try:
        staging.rename(target)
    except OSError:  # another daemon built the same version first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def mounts(shim: Path) -> list[Mount]:
    return [
        Mount(SHIM_DIR_IN_SANDBOX, str(shim), type="bind", read_only=True),
        Mount("/etc/ld.so.preload", str(shim / "ld.so.preload"), type="bind", read_only=True),
    ]
