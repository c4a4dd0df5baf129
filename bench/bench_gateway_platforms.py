"""The long-connection platform channels' timing targets (issue 19): how fast a platform frame is
acked after it arrives (DingTalk redelivers a message whose ack is late), and how fast a dropped
link is dialled again (first attempt within 1 s).

    .venv/bin/python bench/bench_gateway_platforms.py                 # Docker backend, about 1 minute
    .venv/bin/python bench/bench_gateway_platforms.py --frames 2000 --json /tmp/bench-platforms.json

Everything is real except the platforms: the DingTalk, WeCom AI bot and QQ peers of the
integration tests (written from the protocol facts) share this process; the gateway
(``boxruntime gateway``, the ``command`` agent) and the daemon (``boxruntime serve``, Docker)
are processes of their own, all on the same 2-core VM.

Phases:

1. **DingTalk acks**: ``--frames`` chatbot CALLBACK frames from ``--chats`` users, sent at
   ``--rate`` a second (then as fast as the acks come, one frame in flight per chat). The ack
   time is measured at the peer, from writing the frame to reading its ack: the gateway stores
   the message (one commit) before it acks. The gateway's own view (frame read -> ack written,
   its diagnostics ``dt.ack_ms``) is reported next to it. The turns (a help reply, no command)
   run meanwhile.
2. **reconnect after a drop** (on an idle gateway, once the turns of phase 1 are done):
   ``--drops`` times per channel the peer closes the link; the time from the close to the peer
   accepting the next link (DingTalk: after ``connections/open``;
   WeCom: the socket that then subscribes; QQ: the socket that then resumes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench_harness import BenchError, log
from bench_report import pct

from integration_tests.daemon import Daemon, containers_of, start_daemon
from integration_tests.gateway_harness import GatewayProcess
from integration_tests.gateway_peers.dingtalk import DingTalkServer
from integration_tests.gateway_peers.qq import QQServer
from integration_tests.gateway_peers.wecom_aibot import WeComAiBotServer

SECRETS = {"DT_SECRET": "dingtalk-secret-bench", "WC_SECRET": "wecom-secret-bench", "QQ_SECRET": "qqsecretbench0123"}


def summary(values: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50": pct(ms, 50), "p99": pct(ms, 99), "max": round(max(ms), 3) if ms else None}


@contextlib.contextmanager
def daemon_on(work: Path) -> Iterator[Daemon]:
    data = work / "daemon-data"
    daemon = start_daemon(data, "--backend", "docker")
    try:
        yield daemon
    finally:
        daemon.stop()
        if containers_of(data):
            log("warning: the daemon left containers behind")


async def ack_phase(dt: DingTalkServer, frames: int, chats: int, rate: float) -> dict[str, Any]:
    users = [f"user-{i}" for i in range(chats)]
    paced: list[str] = []
    for i in range(frames):
        paced.append(await dt.callback(dt.chatbot_data(f"paced-{i}", "hi", user=users[i % chats])))
        await anyio.sleep(1 / rate)
    await dt.wait_until(lambda: all(m in dt.acks for m in paced), timeout=120)
    paced_latency = list(dt.ack_latency)
    dt.ack_latency.clear()
    burst: list[str] = []
    started = time.monotonic()

    async def chat(user: str, count: int) -> None:
        for i in range(count):
            message_id = await dt.callback(dt.chatbot_data(f"burst-{user}-{i}", "hi", user=user))
            burst.append(message_id)
            await dt.wait_ack(message_id, timeout=120)

    async with anyio.create_task_group() as tg:
        for user in users:
            tg.start_soon(chat, user, frames // chats)
    took = time.monotonic() - started
    return {
        "paced": {"rate": rate, **summary(paced_latency)},
        "burst": {"frames": len(burst), "per_sec": round(len(burst) / took, 1), **summary(list(dt.ack_latency))},
    }


async def reconnects(peer: Any, drops: int) -> dict[str, Any]:
    times: list[float] = []
    for _ in range(drops):
        await peer.wait_until(lambda: peer.ws is not None, timeout=30)
        before = peer.connections
        await anyio.sleep(0.3)  # a link that carried something: the schedule starts from the top
        dropped = time.monotonic()
        await peer.drop()
        await peer.wait_until(lambda before=before: peer.connections > before, timeout=30)
        times.append(peer.connected_at[-1] - dropped)
    return summary(times)


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with daemon_on(work) as daemon:
        async with (
            DingTalkServer("dingbench", SECRETS["DT_SECRET"]) as dt,
            WeComAiBotServer("aib-bench", SECRETS["WC_SECRET"]) as wc,
            QQServer("102000009", SECRETS["QQ_SECRET"], heartbeat_ms=30_000) as qq,
        ):
            channels = [
                {
                    "kind": "dingtalk",
                    "name": "dt",
                    "client_id": "dingbench",
                    "client_secret_env": "DT_SECRET",
                    "openapi_base": dt.url,
                },
                {
                    "kind": "wecom_aibot",
                    "name": "wc",
                    "bot_id": "aib-bench",
                    "secret_env": "WC_SECRET",
                    "ws_url": wc.ws_url,
                },
                {
                    "kind": "qq",
                    "name": "qq",
                    "app_id": "102000009",
                    "secret_env": "QQ_SECRET",
                    "token_url": f"{qq.url}/app/getAppAccessToken",
                    "api_base": qq.url,
                },
            ]
            gateway = GatewayProcess(
                work / "gateway",
                daemon,
                channels,
                env=SECRETS,
                extra={"box": {"scope": "bot"}, "store": {"synchronous": args.synchronous}},
            )
            await gateway.astart()
            try:
                await dt.wait_until(lambda: dt.connections == 1)
                log(f"acks: {args.frames} frames at {args.rate}/s, then a burst")
                acks = await ack_phase(dt, args.frames, args.chats, args.rate)
                inside = (await gateway.diagnostics())["timings"].get("dt.ack_ms", {})
                # The reconnects are timed on an idle gateway: the turns of the ack phase first.
                await gateway.wait_for(lambda d: not any(d["turns"]["pending"].values()), timeout=300)
                log(f"reconnects: {args.drops} drops per channel")
                result = {"acks": acks, "acks_inside_gateway_ms": inside, "reconnect": {}}
                for name, peer in (("dingtalk", dt), ("wecom_aibot", wc), ("qq", qq)):
                    result["reconnect"][name] = await reconnects(peer, args.drops)
                return result
            finally:
                gateway.stop()


def report(results: dict[str, Any]) -> str:
    acks = results["acks"]
    lines = [
        "DingTalk frame -> ack (measured at the peer)        p50        p99        max",
        f"  paced, {acks['paced']['rate']:g} frames/s (n={acks['paced']['n']})".ljust(50)
        + f"{acks['paced']['p50']:>7.2f} ms {acks['paced']['p99']:>7.2f} ms {acks['paced']['max']:>7.2f} ms",
        f"  burst, {acks['burst']['per_sec']:g} frames/s (n={acks['burst']['n']})".ljust(50)
        + f"{acks['burst']['p50']:>7.2f} ms {acks['burst']['p99']:>7.2f} ms {acks['burst']['max']:>7.2f} ms",
        f"  inside the gateway (read -> ack written): {results['acks_inside_gateway_ms']}",
        "reconnect after a drop (drop -> next link)         p50        p99        max",
    ]
    for name, r in results["reconnect"].items():
        lines.append(
            f"  {name} (n={r['n']})".ljust(50) + f"{r['p50']:>7.1f} ms {r['p99']:>7.1f} ms {r['max']:>7.1f} ms"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--chats", type=int, default=8)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--drops", type=int, default=20)
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-platforms-"))
    try:
        results = anyio.run(run, args, work)
    except BenchError as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
