"""``boxruntime image build``: the default sandbox image, made locally without any registry.

debootstrap a minimal Debian (python3 for the agent, ca-certificates for TLS), trim it, and
``docker import`` the tree through the Engine API. Idempotent: an existing image is kept
unless ``--force``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from boxruntime.backends.docker.backend import docker_host
from boxruntime.models import DEFAULT_IMAGE

DEFAULT_SUITE = "bookworm"
DEFAULT_PACKAGES = ("python3", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Bulk nobody needs inside a sandbox: package caches, docs, man pages.
TRIM_PATHS = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info")


class ImageBuildError(Exception):
    """The image cannot be built here; the message says what to do."""


@dataclass(frozen=True)
class BuildOptions:
    name: str = DEFAULT_IMAGE
    suite: str = DEFAULT_SUITE
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    mirror: str = os.environ.get("BOXRUNTIME_DEBIAN_MIRROR", DEFAULT_MIRROR)
    force: bool = False
    work_dir: Path | None = None


def _engine() -> docker.DockerClient:
    try:
        client = docker.DockerClient(base_url=docker_host(), timeout=600)
        client.ping()
        return client
    except Exception as exc:
        raise ImageBuildError(f"Docker engine not reachable at {docker_host()} — start it first ({exc})") from exc


def image_present(name: str = DEFAULT_IMAGE) -> bool:
    try:
        _engine().images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def preflight() -> None:
    if os.geteuid() != 0:
        raise ImageBuildError("building the image needs root (debootstrap creates device nodes): run it with sudo")
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is missing: install it with `apt-get install -y debootstrap`")


def build(options: BuildOptions, say: Callable[[str], None] = print) -> str:
    """Build the image unless present; returns what happened, for the user."""
    client = _engine()
    try:
        client.images.get(options.name)
        if not options.force:
            return f"image {options.name} already present (use --force to rebuild)"
    except docker.errors.ImageNotFound:
        pass
    preflight()
    parent = options.work_dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="boxruntime-image-", dir=parent))
    try:
        say(f"debootstrap {options.suite} ({', '.join(options.packages)}) into {root} ...")
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(options.packages)}",
            options.suite,
            str(root / "rootfs"),
            options.mirror,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ImageBuildError(f"debootstrap failed:\n{(result.stdout + result.stderr)[-2000:]}")
        for rel in TRIM_PATHS:
            target = root / "rootfs" / rel
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
        say(f"importing as {options.name} ...")
        _import(client, root / "rootfs", options.name)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return f"built {options.name}"


def _import(client: docker.DockerClient, rootfs: Path, name: str) -> None:
    repository, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "latest")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    try:
        client.api.import_image(
            src=tar.stdout,
            repository=repository,
            tag=tag,
            stream_src=True,
            changes=[
                "ENV LANG=C.UTF-8",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                'CMD ["python3"]',
                "LABEL org.opencontainers.image.title=boxruntime-sandbox",
            ],
        )
    finally:
        tar.stdout.close()
        if tar.wait() != 0:
            raise ImageBuildError("tar of the image tree failed")
    client.images.get(name)  # proves the import landed under the expected name
