"""Which event loop the daemon runs on (setting ``event_loop``)."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any, Literal

LoopChoice = Literal["auto", "uvloop", "asyncio"]


class LoopUnavailable(Exception):
    """The configured event loop cannot be used here; the message says why."""


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_name(choice: LoopChoice) -> str:
    """The loop a daemon with this setting runs on: "auto" means uvloop where it is installed."""
    if choice == "asyncio":
        return "asyncio"
    if uvloop_installed():
        return "uvloop"
    if choice == "uvloop":
        raise LoopUnavailable("event_loop=uvloop, but uvloop is not installed (pip install uvloop)")
    return "asyncio"


def run_options(choice: LoopChoice) -> dict[str, Any]:
    """``anyio.run`` backend options for the setting."""
    return {"use_uvloop": True} if loop_name(choice) == "uvloop" else {}


def running_loop_name() -> str:
    """The loop this code runs on, as the startup log reports it."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
