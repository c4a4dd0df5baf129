"""The gateway's config: the README's complete example is valid, kinds check their own tables,
secrets come only from the environment, and mistakes are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from langbot_bridge.channels import CHANNELS
from langbot_bridge.gateway.agents import AGENTS
from langbot_bridge.gateway.app import check
from langbot_bridge.gateway.config import GatewayConfigError, load_config, parse_config, read_secret, validate_kind

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text.split("## Chat gateway", 1)[1]
    match = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert match, "the README's Chat gateway section has a ```toml example"
    return match.group(1)


def test_the_readme_example_is_complete_and_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(readme_example())
    for name in re.findall(r'_env = "([A-Z0-9_]+)"', readme_example()):
        monkeypatch.setenv(name, f"value-of-{name.lower()}-long-enough-to-be-a-secret")
    config = load_config(path)
    check(config)
    kinds = {c.kind for c in config.channel}
    assert kinds == {"workbot", "bncr", "http_bot", "dingtalk", "wecom_aibot", "qq", "wecom_app", "wecom_kf"}
    assert config.agent.kind == "openai"
    assert config.data_dir == tmp_path / "gateway-data"
    # Every setting of every model appears in the example (the README documents every key).
    sections = {
        "gateway": config.gateway,
        "server": config.server,
        "store": config.store,
        "outbox": config.outbox,
        "box": config.box,
    }
    example = readme_example()
    for name, model in sections.items():
        for key in type(model).model_fields:
            assert re.search(rf"^#? ?{key} =", example, re.MULTILINE), f"[{name}] {key} is not in the README example"
    for kind in (AGENTS.get("openai"), AGENTS.get("acp"), *(CHANNELS.get(k) for k in kinds)):
        for key in kind.settings.model_fields:
            assert re.search(rf"^#? ?{key} =", example, re.MULTILINE), (
                f"{kind.name}: {key} is not in the README example"
            )


def test_kinds_check_their_own_tables() -> None:
    config = parse_config({"agent": {"kind": "command", "prefix": "/run"}}, Path("."))
    assert validate_kind(AGENTS.get("command").settings, config.agent, "[agent]").prefix == "/run"
    wrong = parse_config({"agent": {"kind": "command", "model": "gpt"}}, Path("."))
    with pytest.raises(GatewayConfigError, match="model: Extra inputs are not permitted"):
        validate_kind(AGENTS.get("command").settings, wrong.agent, "[agent]")
    with pytest.raises(GatewayConfigError, match="unknown agent kind 'acme'; known: acp, command, openai"):
        AGENTS.get("acme")
    with pytest.raises(GatewayConfigError, match="unknown channel kind 'fax'"):
        CHANNELS.get("fax")


def test_mistakes_are_named(tmp_path: Path) -> None:
    with pytest.raises(GatewayConfigError, match="channel names must be unique; repeated: a"):
        parse_config({"channel": [{"kind": "bncr", "name": "a"}, {"kind": "bncr", "name": "a"}]}, tmp_path)
    with pytest.raises(GatewayConfigError, match=r"server\.public_url"):
        parse_config({"server": {"public_url": "ftp://x"}}, tmp_path)
    with pytest.raises(GatewayConfigError, match=r"\[box\] scope: .*unknown variable \{chat\}"):
        check(parse_config({"box": {"scope": "gw_{chat}"}}, tmp_path))
    with pytest.raises(GatewayConfigError, match="no \\[\\[channel\\]\\] is configured"):
        check(parse_config({}, tmp_path))
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1")
    with pytest.raises(GatewayConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(GatewayConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_secrets_come_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_TEST_SECRET", raising=False)
    with pytest.raises(GatewayConfigError, match="environment variable GW_TEST_SECRET is not set"):
        read_secret("GW_TEST_SECRET", "the thing", required=True)
    assert read_secret("GW_TEST_SECRET", "the thing", required=False) is None
    monkeypatch.setenv("GW_TEST_SECRET", "hunter2")
    assert read_secret("GW_TEST_SECRET", "the thing", required=True) == "hunter2"
    with pytest.raises(GatewayConfigError, match="is required"):
        read_secret(None, "the thing", required=True)


def test_the_cli_checks_a_config_and_names_what_is_wrong(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    good = tmp_path / "good.toml"
    good.write_text(
        '[[channel]]\nkind = "http_bot"\nname = "api"\nbot_id = "b"\nsecret_env = "GW_CLI_SECRET"\ncallback_url = "http://127.0.0.1:9/cb"\n'
    )
    env = {**os.environ, "GW_CLI_SECRET": "s" * 32}
    run = [sys.executable, "-m", "boxruntime_cli", "gateway", "--check", "--config"]
    checked = subprocess.run([*run, str(good)], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert (checked.returncode, checked.stdout.strip()) == (0, f"{good}: ok")
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\nkind = "command"\nmodel = "x"\n[[channel]]\nkind = "bncr"\nname = "b"\ntoken_env = "T"\n')
    refused = subprocess.run([*run, str(bad)], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert refused.returncode == 2
    assert "boxruntime gateway: invalid [agent]: model: Extra inputs are not permitted" in refused.stderr
    assert "Traceback" not in refused.stderr
