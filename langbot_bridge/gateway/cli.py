"""``boxruntime gateway --config gateway.toml``: run the chat gateway until SIGTERM or SIGINT.

A stop finishes nothing half-way: the HTTP server closes first, running turns are cancelled
and stay in the store, and the next start resumes them. ``--check`` only validates the file.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import anyio

from boxruntime.errors import BoxError
from langbot_bridge.gateway.app import Gateway, check
from langbot_bridge.gateway.config import GatewayConfig, GatewayConfigError, load_config

log = logging.getLogger(__name__)
EXIT_CONFIG = 2


def loop_options(choice: str) -> dict[str, Any]:
    """``anyio.run`` options for ``[gateway] event_loop``: uvloop (installed with boxruntime on
    Linux) does the same work with less CPU per message than asyncio's own loop."""
    if choice == "asyncio":
        return {}
    if importlib.util.find_spec("uvloop") is not None:
        return {"use_uvloop": True}
    if choice == "uvloop":
        raise GatewayConfigError("[gateway] event_loop = uvloop, but uvloop is not installed (pip install uvloop)")
    return {}


async def serve(config: GatewayConfig) -> None:
    gateway = Gateway(config)
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            tg.start_soon(gateway.run)
            async for signum in signals:
                log.info("gateway stopping (%s)", signal.Signals(signum).name)
                tg.cancel_scope.cancel()
                break
    log.info("gateway stopped")


def run(config_path: Path, *, check_only: bool = False) -> int:
    try:
        if check_only:
            check(load_config(config_path))
            print(f"{config_path}: ok")
            return 0
        config = load_config(config_path)
        check(config)
        anyio.run(serve, config, backend_options=loop_options(config.gateway.event_loop))
    except BoxError as exc:  # configuration errors, refused secrets, unknown kinds
        print(f"boxruntime gateway: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"boxruntime gateway: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0
