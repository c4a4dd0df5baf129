"""The nsjail command line for one session's long-lived jail. Pure: paths in, argv out.

The jail's root is a fresh tmpfs that nsjail builds (no chroot directory on the host to
pollute): host system directories read-only — recreated as symlinks where the host has them
as symlinks (merged /usr) — a synthetic /etc with only what programs need, /proc, a minimal
/dev (with a private devpts for terminals), a size-bounded /tmp, the workspace and extra
mounts, the agent's scripts (read-only) and its socket directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from boxruntime.backends.agent.backend import AGENT_DIR_IN_SANDBOX, AGENT_DIR_OF_SCRIPTS, AGENT_PATH_IN_SANDBOX
from boxruntime.backends.nsjail.cgroups import CgroupSupport
from boxruntime.security import ResolvedMount

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
ETC_ALWAYS = (
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/localtime",
)
ETC_NETWORK = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
JAIL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class JailPlan:
    nsjail: str
    python: str  # the interpreter that runs the agent, as seen inside the jail
    python_mounts: tuple[str, ...]  # read-only host dirs it needs beyond /usr
    agent_scripts: Path
    agent_dir: Path
    etc_files: dict[str, Path]  # sandbox path -> host file (synthetic passwd/group)
    mount_path: str
    workspace: ResolvedMount | None  # None: tmpfs workspace of ``workspace_tmpfs_mb``
    workspace_tmpfs_mb: int
    extras: tuple[ResolvedMount, ...]
    network: bool
    uid: int
    gid: int
    as_root: bool
    tmp_size_mb: int
    memory_mb: int
    pids_limit: int
    cpus: float
    cgroups: CgroupSupport
    log_file: Path
    hostname: str = "box"
    env: dict[str, str] = field(default_factory=dict)


def _system_mounts() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", f"{os.readlink(path)}:{path}"]
        elif os.path.isdir(path):
            args += ["--bindmount_ro", path]
    return args


def _bind(mount: ResolvedMount) -> list[str]:
    return ["--bindmount_ro" if mount.read_only else "--bindmount", f"{mount.host_path}:{mount.mount_path}"]


def jail_argv(plan: JailPlan) -> list[str]:
    args = [
        plan.nsjail,
        "--mode", "o",
        "--time_limit", "0",
        "--quiet",
        "--log", str(plan.log_file),
        "--hostname", plan.hostname,
        "--cwd", "/",
        # nsjail's own defaults (600 s CPU, 1 MB files, 32 fds) suit one-shot jails, not sessions.
        "--rlimit_cpu", "inf",
        "--rlimit_fsize", "inf",
        "--rlimit_nofile", "4096",
        "--rlimit_as", "inf",
        "--rlimit_nproc", "max",
        # The jail's own processes may write their /proc entries, as any process on a host may:
        # the agent raises its commands' oom_score_adj, so an out-of-memory sandbox loses a
        # command rather than its PID 1 (and with it the sandbox). /proc/sys stays root's.
        "--proc_rw",
    ]  # fmt: skip
    if plan.as_root:
        # Root needs no user namespace to build mounts; the jail then drops to the sandbox user.
        args += ["--disable_clone_newuser", "--user", str(plan.uid), "--group", str(plan.gid)]
    else:
        args += ["--user", f"{plan.uid}:{os.getuid()}:1", "--group", f"{plan.gid}:{os.getgid()}:1"]
    if plan.network:
        args.append("--disable_clone_newnet")
    args += plan.cgroups.jail_args(plan.memory_mb, plan.pids_limit, plan.cpus)
    args += _system_mounts()
    for directory in plan.python_mounts:
        args += ["--bindmount_ro", directory]
    etc = ETC_ALWAYS + (ETC_NETWORK if plan.network else ())
    args += [item for path in etc if os.path.exists(path) for item in ("--bindmount_ro", path)]
    for target, source in plan.etc_files.items():
        args += ["--bindmount_ro", f"{source}:{target}"]
    # No tmpfs on /dev: the device nodes are bound into the jail's root, which nsjail remounts
    # read-only, so nothing can be created next to them. nsjail mounts /proc itself.
    args += [item for dev in DEVICES if os.path.exists(dev) for item in ("--bindmount", dev)]
    # A private devpts for commands on a terminal (``exec -t``, E2B's PTY); the jail sees none of
    # the host's.
    args += ["--mount", "none:/dev/pts:devpts:newinstance,ptmxmode=0666,mode=0620", "--symlink", "pts/ptmx:/dev/ptmx"]
    args += ["--mount", f"none:/tmp:tmpfs:size={plan.tmp_size_mb * 1024 * 1024},mode=1777"]
    if plan.workspace is not None:
        args += _bind(plan.workspace)
    else:
        size = plan.workspace_tmpfs_mb * 1024 * 1024
        args += ["--mount", f"none:{plan.mount_path}:tmpfs:size={size},mode=1777"]
    for extra in plan.extras:
        args += _bind(extra)
    args += ["--bindmount_ro", f"{plan.agent_scripts}:{AGENT_DIR_OF_SCRIPTS}"]
    args += ["--bindmount", f"{plan.agent_dir}:{AGENT_DIR_IN_SANDBOX}"]
    env = {"HOME": "/tmp", "PATH": JAIL_PATH, "LANG": "C.UTF-8", **plan.env}
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    # -S -E: the agent needs only the stdlib, and must not be steered by PYTHON* variables.
    args += ["--", plan.python, "-S", "-E", AGENT_PATH_IN_SANDBOX, f"{AGENT_DIR_IN_SANDBOX}/agent.sock"]
    return args
