"""Daemon settings (env, TOML, LangBot's ``box`` section) and id sanitising."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boxruntime import ids
from boxruntime.config import Settings, apply_box_config, load_settings
from boxruntime.errors import BoxValidationError

TOKEN = "t" * 32


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith(("BOXRUNTIME_", "LANGBOT_BOX_", "E2B_")):
            monkeypatch.delenv(name)
    data = tmp_path / "data"
    monkeypatch.setenv("BOXRUNTIME_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ── load_settings ─────────────────────────────────────────────────────────


def test_defaults(clean_env: Path) -> None:
    s = load_settings()
    assert (s.backend, s.host, s.port, s.token, s.max_sessions) == ("local", "127.0.0.1", 5410, None, 64)
    assert s.data_dir == clean_env / "data"
    assert s.mount_roots() == [clean_env / "data"]
    assert s.docker_cpu_limit_enabled is True


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    monkeypatch.setenv("BOXRUNTIME_BACKEND", " Docker ")
    monkeypatch.setenv("BOXRUNTIME_HOST", "0.0.0.0")
    monkeypatch.setenv("BOXRUNTIME_PORT", "6001")
    monkeypatch.setenv("BOXRUNTIME_SESSION_TTL_SEC", "90")
    monkeypatch.setenv("BOXRUNTIME_MAX_SESSIONS", "7")
    monkeypatch.setenv("BOXRUNTIME_DEFAULT_IMAGE", "alpine:3")
    monkeypatch.setenv("BOXRUNTIME_SANDBOX_USER", "1500")
    monkeypatch.setenv("BOXRUNTIME_ALLOWED_MOUNT_ROOTS", "rel/one, /abs/two,,")
    monkeypatch.setenv("E2B_API_KEY", "k")
    s = load_settings()
    assert (s.backend, s.host, s.port, s.session_ttl_sec, s.max_sessions) == ("docker", "0.0.0.0", 6001, 90, 7)
    assert s.default_image == "alpine:3"
    assert s.sandbox_user == "1500:1500"
    assert (s.sandbox_uid, s.sandbox_gid) == (1500, 1500)
    assert s.allowed_mount_roots == [clean_env / "rel" / "one", Path("/abs/two")]
    assert s.mount_roots() == [clean_env / "data", clean_env / "rel" / "one", Path("/abs/two")]
    assert s.e2b_api_key == "k"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOXRUNTIME_PORT", "70000"),
        ("BOXRUNTIME_BACKEND", "kubernetes"),
        ("BOXRUNTIME_MAX_SESSIONS", "5001"),
        ("BOXRUNTIME_SANDBOX_USER", "0"),
        ("BOXRUNTIME_SANDBOX_USER", "nobody"),
    ],
)
def test_invalid_environment_values_fail_startup(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError):
        load_settings()


def test_overrides_win_over_environment_and_none_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOXRUNTIME_BACKEND", "docker")
    monkeypatch.setenv("BOXRUNTIME_PORT", "6001")
    s = load_settings(backend="nsjail", port=None)
    assert (s.backend, s.port) == ("nsjail", 6001)


def test_toml_file_is_read_and_environment_wins(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    path = clean_env / "boxruntime.toml"
    path.write_text('backend = "nsjail"\nport = 7000\nmax_sessions = 3\n')
    monkeypatch.setenv("BOXRUNTIME_PORT", "7001")
    s = load_settings(config_file=path)
    assert (s.backend, s.port, s.max_sessions) == ("nsjail", 7001, 3)
    monkeypatch.setenv("BOXRUNTIME_CONFIG_FILE", str(path))
    assert load_settings().backend == "nsjail"


def test_langbot_box_config_env_is_applied(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    config = {"backend": "docker", "limits": {"max_sessions": 5}, "local": {"host_root": "boxdata"}}
    monkeypatch.setenv("LANGBOT_BOX_CONFIG", json.dumps(config))
    s = load_settings()
    assert (s.backend, s.max_sessions, s.host_root) == ("docker", 5, clean_env / "boxdata")


@pytest.mark.parametrize("raw", ["{not json", '{"limits": {"max_sessions": -1}}'])
def test_bad_langbot_box_config_env_is_ignored(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("LANGBOT_BOX_CONFIG", raw)
    assert load_settings().max_sessions == 64


# ── tokens ────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("token", ["a" * 32, "x" * 100, "A-b_c.D~0123456789" * 2])
def test_good_tokens(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("BOXRUNTIME_TOKEN", token)
    assert load_settings().token == token


@pytest.mark.parametrize("token", ["a" * 31, "short", "a" * 20 + " " + "a" * 20, "\t" + "a" * 40, "a" * 40 + "\n"])
def test_bad_tokens_fail_startup(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("BOXRUNTIME_TOKEN", token)
    with pytest.raises(pydantic.ValidationError, match="at least 32 characters"):
        load_settings()
    with pytest.raises(pydantic.ValidationError):
        Settings(token=token)


def test_langbot_control_token_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    langbot = "L" * 64
    monkeypatch.setenv("LANGBOT_BOX_CONTROL_TOKEN", langbot)
    assert load_settings().token == langbot
    monkeypatch.setenv("BOXRUNTIME_TOKEN", TOKEN)
    assert load_settings().token == TOKEN
    monkeypatch.setenv("BOXRUNTIME_TOKEN", "")
    assert load_settings().token == langbot


def test_bad_langbot_control_token_fails_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGBOT_BOX_CONTROL_TOKEN", "too short")
    with pytest.raises(pydantic.ValidationError):
        load_settings()


def test_empty_token_means_no_token() -> None:
    assert Settings(token="").token is None


# ── apply_box_config ──────────────────────────────────────────────────────


def test_backend_key(clean_env: Path) -> None:
    s = load_settings()
    assert apply_box_config(s, {"backend": "NSJAIL"}) == []
    assert s.backend == "nsjail"
    apply_box_config(s, {"backend": ""})  # empty means auto-selection
    assert s.backend == "local"


def test_gvisor_is_chosen_by_name_only(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from boxruntime.backends.selection import candidates

    s = load_settings()
    assert "gvisor" not in candidates(s)  # local never picks it
    apply_box_config(s, {"backend": "gVisor"})
    assert (s.backend, candidates(s)) == ("gvisor", ("gvisor",))
    monkeypatch.setenv("BOXRUNTIME_BACKEND", "gvisor")
    monkeypatch.setenv("BOXRUNTIME_GVISOR_RUNTIME", "runsc-kvm")
    assert (load_settings().backend, load_settings().gvisor_runtime) == ("gvisor", "runsc-kvm")


def test_local_host_root_defaults_the_allowed_roots(clean_env: Path) -> None:
    s = load_settings()
    assert apply_box_config(s, {"local": {"host_root": "./data/box"}}) == []
    assert s.host_root == clean_env / "data" / "box"
    assert s.allowed_mount_roots == [clean_env / "data" / "box"]
    assert s.skills_dir == clean_env / "data" / "box" / "skills"


def test_local_allowed_mount_roots_as_list_and_as_comma_string(clean_env: Path) -> None:
    s = load_settings()
    apply_box_config(s, {"local": {"host_root": "/srv/box", "allowed_mount_roots": ["/srv/a", "rel/b", " "]}})
    assert s.host_root == Path("/srv/box")
    # Relative entries resolve against the working directory, not host_root (reference §D.1).
    assert s.allowed_mount_roots == [Path("/srv/a"), clean_env / "rel" / "b"]
    apply_box_config(s, {"local": {"allowed_mount_roots": "/srv/c, rel/d ,"}})
    assert s.allowed_mount_roots == [Path("/srv/c"), clean_env / "rel" / "d"]
    # The skills root (under host_root here) is mountable too, so skills reach sessions.
    skills = Path("/srv/box/skills")
    assert s.mount_roots() == [clean_env / "data", skills, Path("/srv/c"), clean_env / "rel" / "d"]


def test_limits_are_langbot_07s_and_unknown_limits_ignored() -> None:
    s = load_settings()
    ignored = apply_box_config(
        s, {"limits": {"max_sessions": 10, "max_managed_processes": 4, "max_workspace_entries": 9}}
    )
    assert (s.max_sessions, s.max_managed_processes) == (10, 4)
    assert ignored == ["limits.max_workspace_entries"]


@pytest.mark.parametrize(
    ("limits", "text"),
    [
        ({"max_sessions": 5001}, "box.limits.max_sessions must be between 0 and 5000"),
        ({"max_rpc_file_bytes": 0}, "box.limits.max_rpc_file_bytes must be between 1 and 104857600"),
        ({"max_managed_processes": True}, "box.limits.max_managed_processes must be between 0 and 1024"),
        ({"max_sessions": 3, "max_completed_processes": "9"}, "max_completed_processes must be between 0 and 10000"),
    ],
)
def test_a_bad_limit_changes_nothing(limits: dict[str, object], text: str) -> None:
    s = load_settings()
    with pytest.raises(BoxValidationError, match=text):
        apply_box_config(s, {"limits": limits})
    assert (s.max_sessions, s.max_completed_processes) == (64, 256)


def test_default_workspace_is_relative_to_host_root() -> None:
    s = load_settings()
    apply_box_config(s, {"local": {"host_root": "/srv/box", "default_workspace": "ws"}})
    assert s.default_workspace == Path("/srv/box/ws")
    assert s.tenant_root == Path("/srv/box/ws/tenants")


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("false", False),
        ("False", False),
        ("0", False),
        (False, False),
        (0, False),
        ("true", True),
        (True, True),
        ("1", True),
    ],
)
def test_docker_cpu_limit_enabled(flag: object, expected: bool) -> None:
    s = load_settings()
    apply_box_config(s, {"docker": {"cpu_limit_enabled": flag}})
    assert s.docker_cpu_limit_enabled is expected


def test_e2b_section() -> None:
    s = load_settings()
    apply_box_config(s, {"e2b": {"api_key": "key", "api_url": "https://e2b.example", "template": "", "other": 1}})
    assert (s.e2b_api_key, s.e2b_api_url, s.e2b_template) == ("key", "https://e2b.example", None)


def test_unknown_keys_are_returned_as_ignored_and_change_nothing() -> None:
    s = load_settings()
    before = s.model_dump()
    ignored = apply_box_config(
        s,
        {
            "enabled": True,
            "default_memory_mb": 1024,
            "runtime": {"endpoint": "ws://x"},
            "local": {"profile": "default", "image": "alpine", "workspace_quota_mb": 5},
            "limits": {"max_workspace_entries": 10},
        },
    )
    assert sorted(ignored) == sorted(
        [
            "enabled",
            "default_memory_mb",
            "runtime",
            "local.profile",
            "local.image",
            "local.workspace_quota_mb",
            "limits.max_workspace_entries",
        ]
    )
    assert s.model_dump() == before


@pytest.mark.parametrize(
    "config",
    [
        {"backend": "docker", "local": {"host_root": "/srv/new"}, "limits": {"max_sessions": 99999}},
        {"limits": {"max_sessions": 5}, "backend": "kubernetes"},
        {"backend": "docker", "local": {"allowed_mount_roots": 123}},
        {"docker": {"cpu_limit_enabled": "false"}, "limits": {"max_sessions": -1}},
        {"limits": {"max_sessions": "many"}},
    ],
)
def test_an_invalid_value_leaves_settings_unchanged(config: dict) -> None:
    s = load_settings()
    before = s.model_dump()
    with pytest.raises(BoxValidationError):
        apply_box_config(s, config)
    assert s.model_dump() == before


def test_config_must_be_an_object() -> None:
    with pytest.raises(BoxValidationError):
        apply_box_config(load_settings(), ["backend", "docker"])  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, False])
def test_limits_reject_bools(value: bool) -> None:
    # LangBot's limits are strict ints: a bool is a mistake, not 1 or 0 (reference §D.1).
    s = load_settings()
    with pytest.raises(BoxValidationError):
        apply_box_config(s, {"limits": {"max_sessions": value}})
    assert s.max_sessions == 64


# ── ids.safe_key ──────────────────────────────────────────────────────────

SAFE = re.compile(r"^[a-z0-9_][a-z0-9_.-]*$")
MAX_KEY = ids.PREFIX_CHARS + 1 + ids.HASH_CHARS
any_text = st.text(st.characters(exclude_categories=()), max_size=120)


def test_ids_that_sanitise_alike_never_collide() -> None:
    family = ["a/b", "a-b", "a b", "a--b", "A-B", "a\\b", "a:b", "a/b/", "-a-b-", "a.b"]
    keys = [ids.safe_key(value) for value in family]
    assert len(set(keys)) == len(family)
    # "a/b", "a-b", "a b" and "A-B" share the readable prefix; only the hash tells them apart.
    assert {keys[i].rsplit("-", 1)[0] for i in (0, 1, 2, 4)} == {"a-b"}


@pytest.mark.parametrize("value", ["../..", "..", ".", "", "/", "/etc/passwd", "~", "-rf", "\0", "日本語", "a" * 500])
def test_hostile_ids_become_safe_names(value: str) -> None:
    key = ids.safe_key(value)
    assert SAFE.match(key)
    assert len(key) <= MAX_KEY
    assert key not in (".", "..")
    assert "/" not in key
    assert ".." not in key.split("-")


def test_dot_dot_ids_are_distinct() -> None:
    keys = {ids.safe_key(value) for value in ["../..", "..", ".", "", "/", "../../.."]}
    assert len(keys) == 6
    assert all(key.startswith("session-") for key in keys)


@settings(max_examples=200, deadline=None)
@given(value=any_text)
def test_safe_key_is_always_safe_and_bounded(value: str) -> None:
    key = ids.safe_key(value)
    assert SAFE.match(key), key
    assert len(key) <= MAX_KEY
    assert ids.safe_key(value) == key  # deterministic: the same id always maps to the same name


@settings(max_examples=200, deadline=None)
@given(a=any_text, b=any_text)
def test_distinct_ids_give_distinct_keys(a: str, b: str) -> None:
    if a != b:
        assert ids.safe_key(a) != ids.safe_key(b)


@settings(max_examples=100, deadline=None)
@given(base=st.text(st.characters(codec="ascii"), min_size=1, max_size=20))
def test_case_and_punctuation_variants_do_not_collide(base: str) -> None:
    variants = {
        base,
        base.upper(),
        base.lower(),
        base.replace("-", "/"),
        base + "/",
        "/" + base,
        base.replace(" ", "_"),
    }
    assert len({ids.safe_key(v) for v in variants}) == len(variants)
