"""The daemon's event loop setting: uvloop where installed, asyncio on request, a clear refusal
when uvloop is demanded but missing."""

from __future__ import annotations

import importlib.util
from typing import Any

import anyio
import pydantic
import pytest

from boxruntime import event_loop
from boxruntime.config import load_settings
from boxruntime.edges import cli


def hide_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "uvloop" else real(name, *args)

    monkeypatch.setattr(event_loop.importlib.util, "find_spec", find_spec)


def test_auto_runs_on_uvloop_where_it_is_installed() -> None:
    assert event_loop.uvloop_installed()  # a dependency of boxruntime on Linux
    assert event_loop.loop_name("auto") == "uvloop"
    assert event_loop.run_options("auto") == {"use_uvloop": True}
    assert event_loop.run_options("asyncio") == {}


def test_without_uvloop_auto_falls_back_and_an_explicit_choice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_uvloop(monkeypatch)
    assert event_loop.loop_name("auto") == "asyncio"
    assert event_loop.run_options("auto") == {}
    with pytest.raises(event_loop.LoopUnavailable, match="uvloop is not installed"):
        event_loop.run_options("uvloop")


@pytest.mark.parametrize("choice", ["auto", "asyncio"])
def test_the_loop_that_runs_is_the_one_chosen(choice: event_loop.LoopChoice) -> None:
    async def which() -> str:
        return event_loop.running_loop_name()

    assert anyio.run(which, backend_options=event_loop.run_options(choice)) == event_loop.loop_name(choice)


def test_setting_comes_from_the_environment_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOXRUNTIME_EVENT_LOOP", "asyncio")
    assert load_settings().event_loop == "asyncio"
    monkeypatch.setenv("BOXRUNTIME_EVENT_LOOP", "trio")
    with pytest.raises(pydantic.ValidationError, match="event_loop"):
        load_settings()


def test_serve_refuses_a_missing_uvloop_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    hide_uvloop(monkeypatch)
    monkeypatch.setenv("BOXRUNTIME_EVENT_LOOP", "uvloop")
    assert cli.main(["serve", "--data-dir", str(tmp_path), "--port", "0"]) == 2
    assert "uvloop is not installed" in capsys.readouterr().err
