"""The small answers (and the empty request) that have no model of their own elsewhere: what
LangBot's server answers to ``box_init``, ``box_get_sessions``, ``box_delete_session`` and
``box_stop_managed_process``, the empty object, and our ``box_exec_input``'s receipt."""

from __future__ import annotations

from boxruntime.models.base import Model
from boxruntime.models.box import SessionInfo


class Empty(Model):
    """``{}``: the request of an action that takes nothing (unknown keys are ignored, as LangBot
    0.5 does), or an answer that says nothing but that the action succeeded."""


class Initialized(Model):
    """``box_init``'s answer."""

    initialized: bool = True


class SessionList(Model):
    """``box_get_sessions``: every live session the caller may see."""

    sessions: list[SessionInfo]


class SessionDeleted(Model):
    """``box_delete_session``: the id as the caller sent it."""

    deleted: str


class ProcessStopped(Model):
    """``box_stop_managed_process``: the id of the process that was stopped."""

    stopped: str


class InputWritten(Model):
    """``box_exec_input``: how many bytes the command took."""

    written: int
