"""E2B's own SDK (e2b 2.63.0, sync and async) against a real ``boxruntime serve``, on Docker
and on nsjail: the daemon's E2B front door is held to the contract of the client E2B ships.

Configured as a user would: ``E2B_API_URL`` = ``E2B_SANDBOX_URL`` = the daemon, and the API
key its token (the Docker daemon has one) or anything (the nsjail daemon has none).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    InvalidArgumentException,
    NotFoundException,
    PtySize,
    Sandbox,
    SandboxException,
    SandboxNotRunningException,
    SandboxQuery,
    TimeoutException,
)
from e2b.sandbox.filesystem.filesystem import FileType

from integration_tests.daemon import connect, eventually
from integration_tests.e2b_site import E2BSite, e2b_site

BACKENDS = ["docker", "nsjail"]


@pytest.fixture(scope="module", params=BACKENDS)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2BSite]:
    backend = request.param
    if backend == "docker":
        request.getfixturevalue("docker_engine")  # fails clearly without an engine or the image
    data_dir = tmp_path_factory.mktemp(f"e2b-{backend}") / "data"
    with e2b_site(data_dir, backend, with_token=backend == "docker") as running:
        yield running


@pytest.fixture
def e2b_env(site: E2BSite, monkeypatch: pytest.MonkeyPatch) -> E2BSite:
    for key, value in site.env().items():
        monkeypatch.setenv(key, value)
    return site


@pytest.fixture
def sandbox(e2b_env: E2BSite) -> Iterator[Sandbox]:
    sbx = Sandbox.create(envs={"SANDBOX_WIDE": "from-create"}, metadata={"suite": "e2b-sdk"})
    try:
        yield sbx
    finally:
        sbx.kill()


# ── control plane ─────────────────────────────────────────────────────────


@pytest.mark.anyio
async def test_a_sandbox_is_an_ordinary_session(e2b_env: E2BSite) -> None:
    sbx = await AsyncSandbox.create(timeout=120, metadata={"owner": "test"})
    info = await sbx.get_info()
    assert (info.template_id, info.state.value, info.envd_version) == ("base", "running", "0.6.1")
    assert 115 <= (info.end_at - info.started_at).total_seconds() <= 125
    async with connect(e2b_env.daemon) as peer:  # LangBot's action RPC sees the same sandbox
        sessions = (await peer.call("box_get_sessions", {}))["sessions"]
        [session] = [s for s in sessions if s["session_id"] == f"e2b-{sbx.sandbox_id}"]
        assert session["mount_path"] == "/home/user" and session["backend_name"] == e2b_env.backend
    listed = await AsyncSandbox.list(query=SandboxQuery(metadata={"owner": "test"})).next_items()
    assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
    again = await AsyncSandbox.connect(sbx.sandbox_id)
    assert (await again.commands.run("echo $HOME")).stdout == "/home/user\n"
    await sbx.set_timeout(600)
    assert ((await sbx.get_info()).end_at - info.started_at).total_seconds() > 590
    assert await sbx.kill() is True
    assert await AsyncSandbox.kill(sbx.sandbox_id) is False
    with pytest.raises(NotFoundException):
        await AsyncSandbox.get_info(sbx.sandbox_id)
    with pytest.raises(SandboxException, match="501: pausing is not supported"):
        await (await AsyncSandbox.create()).pause()


def test_a_sandbox_ends_at_its_timeout(e2b_env: E2BSite) -> None:
    sbx = Sandbox.create(timeout=1)
    assert sbx.is_running()
    anyio.run(eventually, lambda: not sbx.is_running(), 20.0)  # the daemon removes it
    with pytest.raises(NotFoundException):
        sbx.get_info()


def test_the_api_key_is_the_daemons_token(e2b_env: E2BSite, sandbox: Sandbox) -> None:
    raw = httpx.get(f"{e2b_env.daemon.http}/sandboxes/{sandbox.sandbox_id}", headers={"X-API-KEY": "wrong"})
    envd = httpx.post(
        f"{e2b_env.daemon.http}/process.Process/List",
        json={},
        headers={"E2b-Sandbox-Id": sandbox.sandbox_id, "Connect-Protocol-Version": "1"},
    )
    assert envd.status_code == 401 and envd.json()["code"] == "unauthenticated"  # no envd access token
    if e2b_env.api_key != "any-key-will-do":
        assert raw.status_code == 401
        with pytest.raises(AuthenticationException):
            Sandbox.create(api_key="not-the-token")
    else:
        assert raw.status_code == 200  # no token configured: loopback, any key


# ── commands ──────────────────────────────────────────────────────────────


def test_foreground_commands(sandbox: Sandbox) -> None:
    result = sandbox.commands.run('echo "out $SANDBOX_WIDE $ONE"; echo err >&2; pwd', envs={"ONE": "1"})
    assert (result.stdout, result.stderr, result.exit_code) == ("out from-create 1\n/home/user\n", "err\n", 0)
    sandbox.files.make_dir("sub")
    assert sandbox.commands.run("pwd", cwd="sub").stdout == "/home/user/sub\n"
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    with pytest.raises(InvalidArgumentException, match="does not exist"):
        sandbox.commands.run("pwd", cwd="/no/such/dir")
    with pytest.raises(CommandExitException) as failed:
        sandbox.commands.run("echo partial; echo bad >&2; exit 3")
    assert (failed.value.exit_code, failed.value.stdout, failed.value.stderr) == (3, "partial\n", "bad\n")
    with pytest.raises(SandboxException, match="user 'root' is not available"):
        sandbox.commands.run("id", user="root")


def test_output_is_streamed_byte_exact(sandbox: Sandbox) -> None:
    out: list[str] = []
    err: list[str] = []
    script = "for i in 1 2 3; do echo line$i; echo e$i >&2; sleep 0.05; done; printf 'no newline'"
    result = sandbox.commands.run(script, on_stdout=out.append, on_stderr=err.append)
    assert "".join(out) == result.stdout == "line1\nline2\nline3\nno newline"
    assert "".join(err) == "e1\ne2\ne3\n" and len(out) >= 3  # pieces as produced, not one block
    # Bytes, not lines: a UTF-8 character split across writes still decodes; a broken one is
    # replaced, as the SDK's own decoder does it.
    broken = sandbox.commands.run(
        "printf 'caf\\xc3'; sleep 0.05; printf '\\xa9 '; printf 'a%.0s' $(seq 8191); printf '\\xe2'"
    )
    assert broken.stdout == "café " + "a" * 8191 + "\ufffd"


def test_background_commands_reconnect_stdin_and_kill(e2b_env: E2BSite, sandbox: Sandbox) -> None:
    cat = sandbox.commands.run("cat", background=True, stdin=True)
    sleeper = sandbox.commands.run("sleep 60", background=True)
    assert {p.pid for p in sandbox.commands.list()} >= {cat.pid, sleeper.pid}
    listed = {p.pid: p for p in sandbox.commands.list()}
    assert (listed[cat.pid].cmd, listed[cat.pid].args) == ("/bin/bash", ["-l", "-c", "cat"])
    # Another client finds the command by its pid and sees what it writes from then on.
    other = Sandbox.connect(sandbox.sandbox_id)
    attached = other.commands.connect(cat.pid)
    sandbox.commands.send_stdin(cat.pid, "first line\n")
    other.commands.send_stdin(cat.pid, b"second\n")
    sandbox.commands.close_stdin(cat.pid)
    assert attached.wait().stdout == "first line\nsecond\n"
    assert cat.wait().stdout == "first line\nsecond\n"
    assert sandbox.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException) as killed:
        sleeper.wait()
    assert killed.value.exit_code == -1 and killed.value.error == "signal: killed"
    assert sandbox.commands.kill(sleeper.pid) is False
    assert sleeper.pid not in {p.pid for p in sandbox.commands.list()}


def test_the_command_timeout_ends_it(sandbox: Sandbox) -> None:
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30", timeout=1)
    anyio.run(eventually, lambda: sandbox.commands.list() == [], 10.0)  # killed, not left running


def test_killing_the_sandbox_breaks_a_running_command(e2b_env: E2BSite, sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 60", background=True)
    threading.Timer(0.3, lambda: Sandbox.kill(sandbox.sandbox_id)).start()
    with pytest.raises(SandboxNotRunningException):
        handle.wait()
    assert not sandbox.is_running()


def test_a_pty(sandbox: Sandbox) -> None:
    terminal = sandbox.pty.create(PtySize(cols=100, rows=30))
    sandbox.pty.send_stdin(terminal.pid, b"stty size; tty\n")
    out = bytearray()
    for _, _, chunk in terminal:  # as a terminal user does: read, then resize and type on
        out.extend(chunk or b"")
        if b"/dev/pts/" in out and b"\n" in out[out.index(b"/dev/pts/") :]:
            break
    assert b"30 100" in out
    sandbox.pty.resize(terminal.pid, PtySize(cols=120, rows=40))
    sandbox.pty.send_stdin(terminal.pid, b"stty size; exit 0\n")
    assert terminal.wait(on_pty=out.extend).exit_code == 0
    assert b"40 120" in out
    with pytest.raises(SandboxException, match="has a PTY"):
        sandbox.commands.send_stdin(sandbox.pty.create(PtySize(cols=80, rows=24)).pid, "not this way")


# ── files ─────────────────────────────────────────────────────────────────


def test_files(sandbox: Sandbox) -> None:
    info = sandbox.files.write("notes/hello.txt", "hello ✓\n")
    assert info.path == "/home/user/notes/hello.txt"
    assert sandbox.files.read("notes/hello.txt") == "hello ✓\n"
    assert sandbox.commands.run("cat ~/notes/hello.txt").stdout == "hello ✓\n"  # one file system
    blob = os.urandom(5 * 1024 * 1024)
    sandbox.files.write("/home/user/blob.bin", blob)
    assert bytes(sandbox.files.read("/home/user/blob.bin", format="bytes")) == blob
    stat = sandbox.files.get_info("blob.bin")
    assert (stat.type, stat.size, stat.owner, stat.permissions) == (FileType.FILE, len(blob), "user", "-rw-r--r--")
    assert sandbox.files.exists("blob.bin") and not sandbox.files.exists("nothing-here")
    assert sandbox.files.make_dir("a/b") is True and sandbox.files.make_dir("a/b") is False
    moved = sandbox.files.rename("blob.bin", "a/b/moved.bin")
    assert moved.path == "/home/user/a/b/moved.bin" and not sandbox.files.exists("blob.bin")
    top = {e.name: e.type for e in sandbox.files.list("/home/user")}
    assert top == {"notes": FileType.DIR, "a": FileType.DIR}
    deep = sorted(e.path for e in sandbox.files.list(".", depth=3))
    assert "/home/user/a/b/moved.bin" in deep and "/home/user/notes/hello.txt" in deep
    sandbox.files.remove("a")
    sandbox.files.remove("a")  # a missing path: nothing to do, no error
    assert not sandbox.files.exists("a/b/moved.bin")
    with pytest.raises(FileNotFoundException):
        sandbox.files.read("a/b/moved.bin")
    written = sandbox.files.write_files([{"path": "m1.txt", "data": "1"}, {"path": "/tmp/m2.txt", "data": b"2"}])
    assert [w.path for w in written] == ["/home/user/m1.txt", "/tmp/m2.txt"]


def test_signed_file_urls_work_without_the_sdk(sandbox: Sandbox) -> None:
    # What a browser does with them: no E2B headers; the signature alone names the sandbox.
    upload = sandbox.upload_url("shared/up.txt")
    assert httpx.post(upload, files={"file": ("up.txt", b"uploaded")}).status_code == 200
    assert httpx.get(sandbox.download_url("shared/up.txt")).content == b"uploaded"
    expiring = sandbox.download_url("shared/up.txt", use_signature_expiration=60)
    assert httpx.get(expiring).content == b"uploaded"
    tampered = sandbox.download_url("shared/up.txt").replace("up.txt", "other.txt")
    assert httpx.get(tampered).status_code == 401


def test_watch_a_directory(sandbox: Sandbox) -> None:
    sandbox.files.make_dir("watched/deep")
    handle = sandbox.files.watch_dir("watched", recursive=True)
    sandbox.files.write("watched/new.txt", "x")
    sandbox.commands.run("echo y > ~/watched/deep/inner.txt && rm ~/watched/new.txt")
    seen: list[tuple[str, str]] = []

    def collected() -> bool:
        seen.extend((e.name, e.type.name) for e in handle.get_new_events())
        return ("new.txt", "REMOVE") in seen

    anyio.run(eventually, collected, 10.0)
    handle.stop()
    assert seen[:3] == [("new.txt", "CREATE"), ("new.txt", "WRITE"), ("new.txt", "CHMOD")]
    assert ("deep/inner.txt", "CREATE") in seen


# ── async SDK ─────────────────────────────────────────────────────────────


@pytest.mark.anyio
async def test_the_async_sdk(e2b_env: E2BSite, tmp_path: Path) -> None:
    sbx = await AsyncSandbox.create()
    try:
        lines: list[str] = []
        result = await sbx.commands.run("echo a; echo b", on_stdout=lines.append)
        assert result.stdout == "a\nb\n" and "".join(lines) == "a\nb\n"
        handle = await sbx.commands.run("read x; echo got $x", background=True, stdin=True)
        attached = await sbx.commands.connect(handle.pid)
        await sbx.commands.send_stdin(handle.pid, "it\n")
        assert (await attached.wait()).stdout == (await handle.wait()).stdout == "got it\n"
        with pytest.raises(CommandExitException):
            await sbx.commands.run("false")
        events: list[tuple[str, str]] = []
        watcher = await sbx.files.watch_dir("/home/user", on_event=lambda e: events.append((e.name, e.type.name)))
        await sbx.files.write("async.txt", b"\x00\x01binary")
        assert await sbx.files.read("async.txt", format="bytes") == b"\x00\x01binary"
        await eventually(lambda: ("async.txt", "CHMOD") in events, 10.0)
        await watcher.stop()
        assert events[:3] == [("async.txt", "CREATE"), ("async.txt", "WRITE"), ("async.txt", "CHMOD")]
        metrics = await sbx.get_metrics()
        assert metrics and metrics[0].mem_used > 0 and metrics[0].mem_total == 512 * 1024 * 1024
    finally:
        await sbx.kill()
