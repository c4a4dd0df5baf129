"""``/metrics`` on a real daemon (nsjail): scraped and read with prometheus_client's own parser,
every value checked against what the test did (issue 16, metrics)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from boxruntime.errors import BoxActionNotFoundError, BoxSessionNotFoundError, BoxValidationError
from integration_tests.daemon import Daemon, connect, start_daemon

pytestmark = [pytest.mark.anyio]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def daemon(data_dir: Path) -> Iterator[Daemon]:
    proc = start_daemon(data_dir, "--backend", "nsjail", token=secrets.token_urlsafe(32))
    try:
        yield proc
    finally:
        proc.stop()


async def scrape(daemon: Daemon, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.http}/metrics", headers=headers) as response:
        return response.status, await response.text()


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_what_the_daemon_did(daemon: Daemon) -> None:
    assert (await scrape(daemon))[0] == 401
    assert (await scrape(daemon, {"Authorization": "Bearer wrong"}))[0] == 401
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(daemon.url)
    reasons: dict[str, int] = {}
    async with connect(daemon) as peer:
        spec = {"session_id": "m1", "memory_mb": 64}
        await peer.call("box_create_session", spec, timeout=120)
        await peer.call("box_create_session", {"session_id": "m2"}, timeout=120)
        commands = [
            ("echo one", 30),
            ("exit 3", 30),
            ("sleep 5", 1),  # timeout
            ("kill -9 $$", 30),  # signal
            ("python3 -c 'bytearray(256 << 20)'", 30),  # oom
        ]
        for cmd, timeout in commands:
            result = await peer.call("box_exec", {**spec, "cmd": cmd, "timeout_sec": timeout}, timeout=60)
            reasons[result["end_reason"]] = reasons.get(result["end_reason"], 0) + 1
        assert {"exit", "timeout", "signal"} <= set(reasons), reasons
        stream = peer.call_stream("box_exec_stream", {**spec, "cmd": "echo first; sleep 30"}, timeout=60)
        await anext(stream)
        await stream.aclose()  # cancelled: the command ends with the stream
        reasons["cancelled"] = 1
        for bad in (
            lambda: peer.call("box_get_session", {"session_id": "nope"}),
            lambda: peer.call("box_exec", {"session_id": "m1"}),
            lambda: peer.call("box_nope", {}),
        ):
            with pytest.raises((BoxSessionNotFoundError, BoxValidationError, BoxActionNotFoundError)):
                await bad()
        cat = {"session_id": "m1", "spec": {"process_id": "cat", "command": "cat"}}
        await peer.call("box_start_managed_process", cat, timeout=60)
        relay = f"{daemon.http}/v1/sessions/m1/managed-process/cat/ws"
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(relay, protocols=("mcp",), headers=daemon.headers()) as ws:
                await ws.send_str("héllo")  # 6 bytes and a newline, each way
                assert (await ws.receive(timeout=30)).data == "héllo"
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(relay, protocols=("mcp",))

        status, text = await scrape(daemon, daemon.headers())
    assert status == 200
    samples = parse(text)
    backend = {"backend": "nsjail"}
    assert value(samples, "boxruntime_sessions", state="idle", **backend) == 2
    assert value(samples, "boxruntime_sessions", state="running", **backend) == 0
    assert value(samples, "boxruntime_managed_processes", **backend) == 1
    assert value(samples, "boxruntime_session_creations_total", pool="miss", **backend) == 2
    assert value(samples, "boxruntime_session_creations_total", pool="hit", **backend) == 0
    for reason, count in reasons.items():
        assert value(samples, "boxruntime_execs_total", reason=reason, **backend) == count, reason
    ended = sum(reasons.values())
    assert value(samples, "boxruntime_exec_duration_seconds_count", **backend) == ended
    assert value(samples, "boxruntime_exec_duration_seconds_bucket", le="+Inf", **backend) == ended
    assert value(samples, "boxruntime_exec_duration_seconds_sum", **backend) >= 1.0  # the timeout's second
    assert value(samples, "boxruntime_relay_attaches_total") == 1
    assert value(samples, "boxruntime_relay_bytes_total", direction="in") == 7
    assert value(samples, "boxruntime_relay_bytes_total", direction="out") == 7
    errors = {
        ("box_get_session", "BoxSessionNotFoundError"),
        ("box_exec", "BoxValidationError"),
        ("(unknown)", "BoxActionNotFoundError"),
    }
    for action, error in errors:
        assert value(samples, "boxruntime_rpc_errors_total", action=action, error=error) == 1, (action, error)
    assert value(samples, "boxruntime_auth_failures_total", route="/metrics") == 2
    assert value(samples, "boxruntime_auth_failures_total", route="/rpc/ws") == 1
    relay_route = "/v1/sessions/{session_id}/managed-process/{process_id}/ws"
    assert value(samples, "boxruntime_auth_failures_total", route=relay_route) == 1
    assert ("boxruntime_readoptions_total", frozenset()) not in samples  # labelled: no series yet
    print(f"\n{text}")
