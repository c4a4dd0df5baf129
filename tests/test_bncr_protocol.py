"""bncr's wire facts (seed 003): the canonical session key, the six target forms, task prefixes."""

from __future__ import annotations

import pytest

from langbot_bridge.channels.bncr_protocol import Route, extract_task, parse_target, route_from_scope

SEED_EXAMPLE = "agent:main:bncr:direct:71713a303a383838383838"  # scope qq:0:888888


def test_the_canonical_session_key_is_the_seeds() -> None:
    route = route_from_scope("qq:0:888888")
    assert route == Route("qq", "0", "888888") and not route.is_group
    assert route.session_key == SEED_EXAMPLE
    assert Route("微信", "群1", "张三").session_key == "agent:main:bncr:direct:" + "微信:群1:张三".encode().hex()


@pytest.mark.parametrize(
    "target",
    [
        SEED_EXAMPLE,
        "agent:main:bncr:group:71713a303a383838383838",
        "bncr:71713a303a383838383838",
        "bncr:g-71713a303a383838383838",
        "bncr:qq:0:888888",
        "bncr:g-qq:0:888888",
        "bncr:71713A303A383838383838",  # upper-case hex is accepted as input
    ],
)
def test_all_six_target_forms_name_the_same_route(target: str) -> None:
    assert parse_target(target) == (Route("qq", "0", "888888"), None)


def test_a_task_suffix_is_kept() -> None:
    assert parse_target(SEED_EXAMPLE + ":task:Build") == (Route("qq", "0", "888888"), "build")


@pytest.mark.parametrize(
    "target",
    [
        "",
        "qq:0:888888",
        "bncr:",
        "bncr:zz",
        "bncr:qq:0",
        "agent:main:bncr:direct:7171",
        "agent:main:bncr:dm:7171",
        "telegram:1",
    ],
)
def test_other_strings_name_no_route(target: str) -> None:
    assert parse_target(target) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#task:foo\nrun it", ("foo", "run it")),
        ("/task:Foo run it", ("foo", "run it")),
        ("/task foo run it", ("foo", "run it")),
        ("#task = x-1 go", ("x-1", "go")),
        ("no task here", (None, "no task here")),
        ("#tasks:foo", (None, "#tasks:foo")),
        ("/task " + "a" * 40 + " long", (None, "/task " + "a" * 40 + " long")),
    ],
)
def test_task_prefixes(text: str, expected: tuple[str | None, str]) -> None:
    assert extract_task(text) == expected
