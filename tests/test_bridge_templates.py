"""Session id templates: variables, missing and unknown ones, unsafe characters, collisions."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from boxruntime.errors import BoxValidationError
from langbot_bridge.templates import (
    MAX_ID_CHARS,
    TEMPLATE_VARIABLES,
    ChatContext,
    SessionTemplate,
    resolve_session_id,
)

SAFE_ID = re.compile(r"[A-Za-z0-9_.-]+")
HASHED = re.compile(r"\.[0-9a-f]{16}$")


def test_default_template_scopes_by_chat_window() -> None:
    # Platforms hand over numeric ids; they are kept as their decimal text.
    chat = ChatContext.model_validate({"launcher_type": "group", "launcher_id": 123456, "sender_id": 789})
    assert resolve_session_id("{launcher_type}_{launcher_id}", chat) == "group_123456"
    assert resolve_session_id("{launcher_type}_{launcher_id}_{sender_id}", chat) == "group_123456_789"


def test_every_documented_variable_can_be_used() -> None:
    assert TEMPLATE_VARIABLES == (
        "launcher_type",
        "launcher_id",
        "sender_id",
        "conversation_id",
        "query_id",
        "platform",
        "group_id",
        "user_id",
    )
    values = {name: f"v{i}" for i, name in enumerate(TEMPLATE_VARIABLES)}
    template = "_".join("{" + name + "}" for name in TEMPLATE_VARIABLES)
    assert resolve_session_id(template, ChatContext(**values)) == "v0_v1_v2_v3_v4_v5_v6_v7"


def test_uuid_conversation_ids_stay_readable() -> None:
    chat = ChatContext(launcher_type="person", launcher_id="1", conversation_id="a1b2c3d4-0000-4000-8000-abcdefabcdef")
    assert (
        resolve_session_id("{launcher_type}_{launcher_id}_{conversation_id}", chat)
        == "person_1_a1b2c3d4-0000-4000-8000-abcdefabcdef"
    )


def test_unknown_variable_is_named_with_the_known_ones() -> None:
    with pytest.raises(BoxValidationError, match=r"unknown variable \{room\}.*\{launcher_type\}"):
        resolve_session_id("{launcher_type}_{room}", ChatContext(launcher_type="group"))


@pytest.mark.parametrize("template", ["{}", "{0}", "{launcher_id!r}", "{launcher_id:>5}", "{launcher_id.real}"])
def test_positional_fields_conversions_and_specs_are_refused(template: str) -> None:
    with pytest.raises(BoxValidationError):
        SessionTemplate.parse(template)


def test_missing_variable_is_an_error_not_a_shared_unknown_box() -> None:
    chat = ChatContext(launcher_type="group", launcher_id="1")
    with pytest.raises(BoxValidationError, match="needs sender_id"):
        resolve_session_id("{launcher_type}_{launcher_id}_{sender_id}", chat)
    with pytest.raises(BoxValidationError, match="needs sender_id"):
        resolve_session_id("{sender_id}", ChatContext(sender_id=""))  # empty counts as missing


@pytest.mark.parametrize("template", ["", "   ", "box/{launcher_id}", "{launcher_id} x", "{launcher_id}.{sender_id}"])
def test_bad_literal_text_is_refused(template: str) -> None:
    with pytest.raises(BoxValidationError):
        SessionTemplate.parse(template)


@pytest.mark.parametrize(
    "template", ["{launcher_type}{launcher_id}", "{launcher_type}x{launcher_id}", "{launcher_type}-{launcher_id}"]
)
def test_adjacent_variables_need_an_underscore_separator(template: str) -> None:
    with pytest.raises(BoxValidationError):
        SessionTemplate.parse(template)


def test_a_template_without_variables_is_one_shared_box() -> None:
    assert resolve_session_id("shared-box", ChatContext()) == "shared-box"


@pytest.mark.parametrize("value", ["a/b", "../../etc", "a b", "名字", "x\0y", "wxid_abc", "a.b", "user@host"])
def test_unsafe_characters_are_replaced_and_marked_with_a_hash(value: str) -> None:
    session_id = resolve_session_id("{launcher_type}_{sender_id}", ChatContext(launcher_type="group", sender_id=value))
    assert SAFE_ID.fullmatch(session_id), session_id
    assert HASHED.search(session_id), session_id
    assert session_id.startswith("group_")
    assert "/" not in session_id and ".." not in session_id


def test_values_that_sanitise_alike_still_get_different_ids() -> None:
    template = SessionTemplate.parse("{launcher_type}_{launcher_id}")
    ids = {template.render(ChatContext(launcher_type="group", launcher_id=v)) for v in ("a/b", "a-b", "a b", "a//b")}
    assert len(ids) == 4
    assert "group_a-b" in ids  # the already-safe one stays plain


def test_values_cannot_borrow_the_separator() -> None:
    template = SessionTemplate.parse("{launcher_type}_{launcher_id}")
    one = template.render(ChatContext(launcher_type="a_b", launcher_id="c"))
    two = template.render(ChatContext(launcher_type="a", launcher_id="b_c"))
    assert one != two


def test_long_values_are_capped_and_stay_distinct() -> None:
    template = SessionTemplate.parse("{launcher_type}_{launcher_id}")
    one = template.render(ChatContext(launcher_type="p", launcher_id="x" * 500 + "1"))
    two = template.render(ChatContext(launcher_type="p", launcher_id="x" * 500 + "2"))
    assert len(one) <= MAX_ID_CHARS and len(two) <= MAX_ID_CHARS
    assert one != two and HASHED.search(one)


def test_rendering_is_deterministic() -> None:
    chat = ChatContext(launcher_type="person", launcher_id="a/b")
    assert resolve_session_id("{launcher_type}_{launcher_id}", chat) == resolve_session_id(
        "{launcher_type}_{launcher_id}", chat
    )


values = st.text(min_size=1, max_size=12)


@given(a=st.tuples(values, values, values), b=st.tuples(values, values, values))
def test_different_chats_never_share_an_id(a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
    template = SessionTemplate.parse("{launcher_type}_{launcher_id}_-x_{sender_id}")

    def render(v: tuple[str, str, str]) -> str:
        return template.render(ChatContext(launcher_type=v[0], launcher_id=v[1], sender_id=v[2]))

    first, second = render(a), render(b)
    assert SAFE_ID.fullmatch(first) and len(first) <= MAX_ID_CHARS
    assert (first == second) == (a == b)


tricky = st.text(alphabet="ab-_/", min_size=1, max_size=6)


@given(a=st.tuples(tricky, tricky), b=st.tuples(tricky, tricky))
def test_ids_from_separator_like_values_never_collide(a: tuple[str, str], b: tuple[str, str]) -> None:
    template = SessionTemplate.parse("{launcher_type}_{launcher_id}")
    first = template.render(ChatContext(launcher_type=a[0], launcher_id=a[1]))
    second = template.render(ChatContext(launcher_type=b[0], launcher_id=b[1]))
    assert (first == second) == (a == b)
