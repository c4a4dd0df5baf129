"""The chat gateway under load: messages per second with the ``command`` agent and a warm
daemon, the latency the gateway adds per message, platform ack times under that load, and the
gateway's memory with 1,000 known chats.

    .venv/bin/python bench/bench_gateway.py                  # Docker backend, about 2 minutes
    .venv/bin/python bench/bench_gateway.py --messages 5000 --json /tmp/bench-gateway.json

Everything is real except the platform: the WorkBot server of the integration tests (written
from seed 004) sends signed callbacks and takes the replies. Its 60-a-minute send limit is
lifted here (``rate_limit`` very high on both sides): with it, no gateway could send more than
one reply a second, and the point is the gateway's own cost. The gateway (``boxruntime gateway``)
and the daemon (``boxruntime serve``, Docker) are processes of their own; the load generator and
the WorkBot server share this process. All on the same 2-core VM.

Phases:

1. **warm-up**: ``--chats`` chats each get their sandbox and a few messages (untimed).
2. **added latency** (``--rounds`` sequential messages, one at a time, chats in turn): the time
   from sending WorkBot's callback to receiving the reply at ``send-message``, minus the same
   command run on the same session straight through the daemon (our own WebSocket link,
   measured right after). What is left is the gateway: HTTP in and out, the signature, two
   commits to SQLite (claim; reply + done) and one to mark the reply sent, the outbox listing.
3. **throughput** (``--messages`` callbacks, each chat sending its next one as soon as the
   previous is acked): messages per second from the first callback to the last reply, and the
   callback acks' latency (p50, p99) under that load.
4. **1,000 known chats**: a second gateway whose chats share one sandbox (``scope = "bot"``:
   the daemon's session limit is not what is measured) gets one message from each of
   ``--known-chats`` chats; the gateway process's RSS is read after the last reply.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench_harness import BenchError, log
from bench_report import pct

from integration_tests.daemon import Daemon, containers_of, start_daemon
from integration_tests.gateway_harness import GatewayProcess
from integration_tests.gateway_peers.workbot import WorkBotServer
from langbot_bridge import BoxService, Connector, RemoteTarget

ROBOT = "robot_bench"
TOKEN = "workbot-robot-token-for-the-bench-0123456789"
SECRET = "workbot-signing-secret-for-the-bench"
UNLIMITED = 1_000_000


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def summary(values: list[float]) -> dict[str, float | None]:
    return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99)}


@contextlib.contextmanager
def daemon_on(work: Path) -> Iterator[Daemon]:
    data = work / "daemon-data"
    daemon = start_daemon(data, "--backend", "docker")
    try:
        yield daemon
    finally:
        daemon.stop()
        left = containers_of(data)
        if left:
            log(f"warning: the daemon left containers: {left}")


def gateway_for(
    work: Path, daemon: Daemon, peer: WorkBotServer, scope: str, synchronous: str, turns: int
) -> GatewayProcess:
    channel = {
        "kind": "workbot",
        "name": "wb",
        "robot_id": ROBOT,
        "token_env": "WB_TOKEN",
        "secret_env": "WB_SECRET",
        "api_base": peer.url,
        "rate_limit": UNLIMITED,
        "group_reply": "all",
    }
    gateway = GatewayProcess(
        work,
        daemon,
        [channel],
        env={"WB_TOKEN": TOKEN, "WB_SECRET": SECRET},
        extra={
            "box": {"scope": scope},
            "gateway": {"max_concurrent_turns": turns},
            "store": {"synchronous": synchronous},
        },
    )
    return gateway


async def send(peer: WorkBotServer, chat: str, text: str) -> float:
    """One callback; returns how long the ack took (seconds)."""
    status, answer, took = await peer.deliver(peer.payload(spoken=text, receivedName=chat))
    if status != 200 or answer != {"code": 0, "message": "success"}:
        raise BenchError(f"the gateway refused a callback: HTTP {status} {answer}")
    return took


async def warm_up(peer: WorkBotServer, chats: list[str], per_chat: int) -> None:
    async with anyio.create_task_group() as tg:
        for chat in chats:

            async def chat_warm_up(chat: str = chat) -> None:
                for n in range(per_chat):
                    await send(peer, chat, f"/sh echo warm {n}")

            tg.start_soon(chat_warm_up)
    await peer.wait_sent(len(chats) * per_chat, timeout=300)


async def added_latency(peer: WorkBotServer, daemon: Daemon, chats: list[str], rounds: int) -> dict[str, Any]:
    through: list[float] = []
    direct: list[float] = []
    added: list[float] = []
    acks: list[float] = []
    async with Connector(RemoteTarget(daemon.url)) as connector:
        await connector.wait_available(60)
        service = BoxService(connector)
        for n in range(rounds):
            chat = chats[n % len(chats)]
            command = f"echo round {n}"
            before = len(peer.sent)
            started = time.perf_counter()
            acks.append(await send(peer, chat, f"/sh {command}"))
            await peer.wait_sent(before + 1)
            end_to_end = time.perf_counter() - started
            if peer.sent[-1]["content"] != f"round {n}":
                raise BenchError(f"unexpected reply {peer.sent[-1]['content']!r} in round {n}")
            started = time.perf_counter()
            result = await service.exec(f"gw_wb_person_{chat}", command)
            exec_only = time.perf_counter() - started
            if result.stdout.rstrip("\n") != f"round {n}":
                raise BenchError(f"unexpected direct exec output {result.stdout!r}")
            through.append(ms(end_to_end))
            direct.append(ms(exec_only))
            added.append(ms(end_to_end - exec_only))
    return {
        "end_to_end_ms": summary(through),
        "exec_direct_ms": summary(direct),
        "added_ms": summary(added),
        "ack_ms": summary([ms(a) for a in acks]),
    }


async def throughput(peer: WorkBotServer, chats: list[str], messages: int) -> dict[str, Any]:
    per_chat = messages // len(chats)
    total = per_chat * len(chats)
    acks: list[float] = []
    before = len(peer.sent)
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for chat in chats:

            async def chat_load(chat: str = chat) -> None:
                for n in range(per_chat):
                    acks.append(await send(peer, chat, f"/sh echo {chat} {n}"))

            tg.start_soon(chat_load)
    offered = time.perf_counter() - started
    await peer.wait_sent(before + total, timeout=600)
    elapsed = time.perf_counter() - started
    replies = peer.sent[before:]
    for chat in chats:  # every message answered, in order, once
        mine = [m["content"] for m in replies if m["titleList"] == [chat]]
        if mine != [f"{chat} {n}" for n in range(per_chat)]:
            raise BenchError(f"chat {chat}: replies missing, repeated or out of order")
    return {
        "messages": total,
        "chats": len(chats),
        "seconds": round(elapsed, 3),
        "messages_per_s": round(total / elapsed, 1),
        "offered_per_s": round(total / offered, 1),
        "ack_ms": summary([ms(a) for a in acks]),
    }


async def paced(
    peer: WorkBotServer, gateway: GatewayProcess, chats: list[str], rate: float, seconds: float
) -> dict[str, Any]:
    """Callbacks at a steady ``rate`` (each on schedule, whether or not earlier ones were
    answered, as a platform sends them): their acks, and when the replies came."""
    total = int(rate * seconds)
    acks: list[float] = []
    before = len(peer.sent)
    started = time.perf_counter()

    async def one(n: int) -> None:
        acks.append(await send(peer, chats[n % len(chats)], f"/sh echo paced {n}"))

    async with anyio.create_task_group() as tg:
        for n in range(total):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await anyio.sleep(delay)
            tg.start_soon(one, n)
    await peer.wait_sent(before + total, timeout=600)
    elapsed = time.perf_counter() - started
    diagnostics = await gateway.diagnostics()
    timings = diagnostics["timings"]  # over the last 1,000 callbacks
    inside, commit = timings["inbound_request_ms"], timings["claim_commit_ms"]
    answered = sorted(m["content"] for m in peer.sent[before:])
    if answered != sorted(f"paced {n}" for n in range(total)):
        raise BenchError("paced load: replies missing or repeated")
    return {
        "messages": total,
        "rate_per_s": rate,
        "seconds_to_last_reply": round(elapsed, 3),
        "lag_after_last_callback_s": round(elapsed - seconds, 3),
        "ack_ms": summary([ms(a) for a in acks]),
        "ack_inside_gateway_ms": inside,
        "claim_commit_ms": commit,
        "store_batch_ms": diagnostics["store"]["batch_ms"],
        "store_operations_per_commit": round(diagnostics["store"]["operations"] / diagnostics["store"]["commits"], 2),
    }


async def known_chats(
    peer: WorkBotServer, gateway: GatewayProcess, count: int, concurrency: int = 32
) -> dict[str, Any]:
    assert gateway.proc is not None
    process = psutil.Process(gateway.proc.pid)
    idle = process.memory_info().rss / 2**20
    limiter = anyio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with limiter:
            await send(peer, f"known{n:04d}", f"/sh echo {n}")

    before = len(peer.sent)
    async with anyio.create_task_group() as tg:
        for n in range(count):
            tg.start_soon(one, n)
    await peer.wait_sent(before + count, timeout=600)
    diagnostics = await gateway.diagnostics()
    known = diagnostics["store"]["wb"]["known_chats"]
    return {
        "known_chats": known,
        "rss_idle_mib": round(idle, 1),
        "rss_mib": round(process.memory_info().rss / 2**20, 1),
        "uss_mib": round(process.memory_full_info().uss / 2**20, 1),
    }


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": psutil.cpu_count(),
        "synchronous": args.synchronous,
        "max_concurrent_turns": args.turns,
        "load_average_before": [round(x, 2) for x in psutil.getloadavg()],
    }
    chats = [f"chat{n:02d}" for n in range(args.chats)]
    with daemon_on(work) as daemon:
        async with WorkBotServer(ROBOT, TOKEN, SECRET, limit=UNLIMITED, window=60, keep_alive=True) as peer:
            gateway = gateway_for(
                work / "gateway", daemon, peer, scope="chat", synchronous=args.synchronous, turns=args.turns
            )
            await gateway.astart()
            peer.callback_url = f"{gateway.url}/workbot/wb"
            try:
                log(f"warm-up: {len(chats)} chats")
                await warm_up(peer, chats, per_chat=3)
                log(f"added latency: {args.rounds} sequential messages")
                results["latency"] = await added_latency(peer, daemon, chats, args.rounds)
                log(f"throughput: {args.messages} messages")
                assert gateway.proc is not None
                pids = {"gateway": gateway.proc.pid, "daemon": daemon.proc.pid, "load generator + WorkBot": os.getpid()}
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                results["throughput"] = await throughput(peer, chats, args.messages)
                spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
                count = results["throughput"]["messages"]
                results["throughput"]["cpu_ms_per_message"] = {
                    name: round(s * 1000 / count, 3) for name, s in spent.items()
                }
                log(f"paced load: {args.rate:g} messages/s for {args.paced_seconds:g} s")
                results["paced"] = await paced(peer, gateway, chats, args.rate, args.paced_seconds)
                assert gateway.proc is not None
                results["throughput"]["rss_mib"] = round(psutil.Process(gateway.proc.pid).memory_info().rss / 2**20, 1)
            finally:
                gateway.stop()
            shared = gateway_for(
                work / "gateway-known", daemon, peer, scope="bot", synchronous=args.synchronous, turns=args.turns
            )
            await shared.astart()
            peer.callback_url = f"{shared.url}/workbot/wb"
            try:
                log(f"known chats: {args.known_chats}")
                results["known_chats"] = await known_chats(peer, shared, args.known_chats)
            finally:
                shared.stop()
    return results


def report(results: dict[str, Any]) -> str:
    lat, thr, known, steady = results["latency"], results["throughput"], results["known_chats"], results["paced"]

    def row(label: str, stats: dict[str, Any]) -> str:
        cells = "".join(
            f"{stats[q]:>10.2f} ms" if stats[q] is not None else f"{'-':>13}" for q in ("p50", "p95", "p99")
        )
        return f"{label:<52}{cells}   (n={stats['n']})"

    def inside_row(label: str, stats: dict[str, Any]) -> str:
        return f"{label:<52}{stats['p50']:>10.2f} ms{'':>13}{stats['p99']:>10.2f} ms"

    head = f"{'':<52}{'p50':>13}{'p95':>13}{'p99':>13}"
    lines = [
        f"store synchronous={results['synchronous']}, max_concurrent_turns={results['max_concurrent_turns']}; "
        f"load average before: {results['load_average_before']}",
        head,
        row("callback -> reply at send-message, sequential", lat["end_to_end_ms"]),
        row("same command straight through the daemon", lat["exec_direct_ms"]),
        row("added by the gateway (per message, difference)", lat["added_ms"]),
        row("callback ack, sequential", lat["ack_ms"]),
        row(f"callback ack, at a steady {steady['rate_per_s']:.0f} msg/s", steady["ack_ms"]),
        row(f"callback ack, saturated ({thr['messages_per_s']:.0f} msg/s)", thr["ack_ms"]),
        inside_row("  the steady acks, inside the gateway (last 1,000)", steady["ack_inside_gateway_ms"]),
        inside_row("  ... of which the store's commit", steady["claim_commit_ms"]),
        "",
        f"throughput: {thr['messages']} messages from {thr['chats']} chats in {thr['seconds']:.1f} s = "
        f"{thr['messages_per_s']:.1f} messages/s (callbacks offered at {thr['offered_per_s']:.1f}/s); "
        f"gateway RSS after: {thr['rss_mib']:.1f} MiB",
        "CPU per message in the throughput phase: "
        + ", ".join(f"{name} {value:.2f} ms" for name, value in thr["cpu_ms_per_message"].items()),
        f"steady load: {steady['messages']} callbacks at {steady['rate_per_s']:.0f}/s; the last reply "
        f"{steady['lag_after_last_callback_s']:.2f} s after the last callback",
        f"known chats: {known['known_chats']}; gateway RSS {known['rss_mib']:.1f} MiB "
        f"(USS {known['uss_mib']:.1f} MiB; {known['rss_idle_mib']:.1f} MiB before the 1,000 chats)",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=16, help="chats (sandboxes) for the latency and load phases")
    parser.add_argument("--rounds", type=int, default=300, help="sequential messages for the added latency")
    parser.add_argument("--messages", type=int, default=4000, help="messages in the throughput phase")
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second of the steady phase")
    parser.add_argument("--paced-seconds", type=float, default=10.0, help="how long the steady phase sends")
    parser.add_argument("--known-chats", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=16, help="[gateway] max_concurrent_turns")
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full", help="[store] synchronous")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        # The load generator and the WorkBot server share this process: uvloop keeps their CPU down.
        results = anyio.run(run, args, work, backend_options={"use_uvloop": True})
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
