"""The README's code and the files in examples/ run, as a reader would run them, against a real
daemon: every ``python`` and ``sh`` block of README.md in order (but the few listed below,
with why), each example script, and the LangBot config through LangBot's own client."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml
from langbot_plugin.box.models import BoxSpec

from integration_tests.daemon import ROOT, Daemon, containers_of, daemon_env, start_daemon
from integration_tests.langbot_client import over_websocket
from integration_tests.mcp_site import copy_distributions

pytestmark = pytest.mark.docker

TIMEOUT = 600
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
PYTHON = ROOT / ".venv" / "bin" / "python"
# Blocks a reader runs that this test does not, each with the reason; each must still be there.
NOT_RUN = {
    "./dev serve     #": "the quick start: `./dev serve` runs until stopped (this test runs the same daemon) "
    "and `./dev test` is CI itself",
    "sudo .venv/bin/boxruntime image build": "CI builds the image with this command (./dev test), as root",
}
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block."""
    return [(match.group(1), match.group(2)) for match in _BLOCK.finditer(text)]


@pytest.fixture
def box(docker_engine: docker.DockerClient, data_dir: Path) -> Iterator[Daemon]:
    daemon = start_daemon(data_dir, "--backend", "docker")
    try:
        yield daemon
    finally:
        daemon.stop()
        assert containers_of(data_dir) == []


def reader_env(daemon: Daemon) -> dict[str, str]:
    """A reader's shell after `./dev serve`: the daemon in BOXRUNTIME_ENDPOINT, nothing else of ours."""
    env = daemon_env(daemon.data_dir, BOXRUNTIME_ENDPOINT=daemon.url)
    env.pop("PYTHONPATH", None)  # the venv has boxruntime installed (editable), as after ./dev setup
    return env


def exported(code: str, daemon: Daemon) -> dict[str, str]:
    """What a sh block's ``export`` lines leave in the reader's shell for the blocks after it
    (each block runs in its own process here), the README's default address read as this
    test daemon's own port."""
    found: dict[str, str] = {}
    for line in code.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            for word in words[1:]:
                name, _, value = word.partition("=")
                found[name] = value.replace("http://127.0.0.1:5410", daemon.http)
    return found


def run(argv: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def test_every_readme_block_runs(box: Daemon, tmp_path: Path) -> None:
    blocks = [(lang, code) for lang, code in code_blocks(README.read_text()) if lang in ("python", "sh")]
    skipped = {marker: [code for _, code in blocks if marker in code] for marker in NOT_RUN}
    assert all(len(found) == 1 for found in skipped.values()), skipped  # the list is current
    to_run = [(lang, code) for lang, code in blocks if not any(marker in code for marker in NOT_RUN)]
    assert [lang for lang, _ in to_run].count("python") >= 2, "the README's Python examples are gone"
    env = reader_env(box)
    outputs = []
    try:
        for number, (lang, code) in enumerate(to_run):
            if lang == "python":
                script = tmp_path / f"block{number}.py"
                script.write_text(code)
                done = run([str(PYTHON), str(script)], env)
            else:
                done = run(["bash", "-e", "-o", "pipefail", "-c", code], env)
                env.update(exported(code, box))
            assert done.returncode == 0, f"README block {number} ({lang}) failed:\n{code}\n{done.stdout}{done.stderr}"
            outputs.append(done.stdout)
    finally:
        shutil.rmtree(ROOT / "mcp-packages", ignore_errors=True)  # what the MCP example installs
    text = "".join(outputs)
    assert "hello from the box\n" in text
    assert "'get_current_time'" in text and '"timezone": "UTC"' in text
    assert "HELLO\n" in text
    assert "hi\n\nhello\n" in text  # the E2B SDK's block: the command's stdout, then the file


def test_the_chat_bot_example(box: Daemon) -> None:
    chat = "\n".join(
        [
            "alice: !save note.txt hi from alice",
            "alice: !show note.txt",
            "bob: !show note.txt",
            "bob: !run echo $((6 * 7))",
            "bob: !run exit 3",
            "carol: hello?",
        ]
    )
    done = run([str(PYTHON), str(EXAMPLES / "chat_bot.py")], reader_env(box), stdin=chat + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "alice> saved note.txt",
        "alice> hi from alice",
        "bob> no note.txt in this chat",  # chats never share a sandbox
        "bob> 42",
        "bob> exit 3",
        "carol> say !run <command>, !save <file> <text> or !show <file>",
    ]
    listed = run([str(PYTHON), "-m", "boxruntime_cli", "sessions", "--json"], reader_env(box))
    assert listed.stdout.strip() == "[]"  # the bot removed its sandboxes when its input ended


def test_the_mcp_in_box_example(box: Daemon, tmp_path: Path) -> None:
    packages = tmp_path / "mcp-packages"
    copy_distributions(["mcp-server-time"], packages)  # what its `pip install --target` gives, offline
    done = run([str(PYTHON), str(EXAMPLES / "mcp_in_box.py"), str(packages)], reader_env(box))
    assert done.returncode == 0, done.stderr
    assert "tool: get_current_time" in done.stdout and "tool: convert_time" in done.stdout
    assert '"timezone": "Asia/Tokyo"' in done.stdout


@pytest.mark.anyio
async def test_the_langbot_config_example(box: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = yaml.safe_load((EXAMPLES / "langbot" / "config.yaml").read_text())["box"]
    assert config["runtime"]["endpoint"] == "ws://127.0.0.1:5410"  # what the file tells readers
    endpoint = f"ws://127.0.0.1:{box.port}/rpc/ws"  # the same daemon, on this test's port
    monkeypatch.chdir(tmp_path)  # LangBot's handler writes data/temp/lbp under the cwd
    async with over_websocket(endpoint) as link:
        # What LangBot sends on connect: its box section without the runtime key.
        await link.client.init({key: value for key, value in config.items() if key != "runtime"})
        result = await link.client.execute(BoxSpec(session_id="from-langbot", cmd="echo configured"))
        assert (result.exit_code, result.stdout) == (0, "configured")
        status = await link.client.get_status()
        assert status["max_sessions"] == config["limits"]["max_sessions"]
        await link.client.delete_session("from-langbot")
    ignored = [line for line in box.log().splitlines() if "box_init: ignored keys" in line]
    assert [line.split("ignored keys ")[1] for line in ignored] == ["enabled"]  # LangBot's own switch


def test_examples_are_all_covered() -> None:
    files = sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*") if p.is_file() and p.suffix != ".md")
    assert files == ["chat_bot.py", "langbot/config.yaml", "mcp_in_box.py"], "a new example needs a test here"
