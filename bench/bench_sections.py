"""The measurement sections of bench_exec.py; each one alternates between the two daemons."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from bench_harness import (
    OURS,
    SIDES,
    THEIRS,
    BenchError,
    PoolWatch,
    Shape,
    Side,
    call_action,
    check_error_budget,
    check_result,
    log,
    pool_status,
    process_memory,
    round_order,
    timed,
)

# Warm execs run in alternating blocks, each after a pause: interleaved, so slow drift hits both
# daemons alike, and settled, so neither pays for the other's background work (a `docker exec`
# is torn down after it answers). The first exec of a block comes after an idle pause, as an
# agent's commands do between model turns; the rest come back to back, as within one turn.
# They are reported apart: on a VM, waking idle vCPUs and cold caches cost more than the exec.
WARM_BLOCK = 20
WARM_SETTLE_SEC = 0.5


async def bench_warm(
    sides: dict[str, Side], shape: Shape, rounds: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    """Samples per side: ``burst`` (back to back) and ``after_idle`` (first of each block)."""
    burst: dict[str, list[float]] = {OURS: [], THEIRS: []}
    after_idle: dict[str, list[float]] = {OURS: [], THEIRS: []}
    specs = {name: shape.spec(name, f"bench-{shape.run_id}-warm") for name in SIDES}
    for name in SIDES:
        side = sides[name]
        ms, _ = await timed(side, "box_create_session (warm)", lambda s=side: s.client.create_session(specs[s.key]))
        if ms is None:
            raise BenchError(f"{side.name}: could not create the warm session: {side.errors[-1]}")
    for i in range(warmup):
        for name in round_order(i):
            side = sides[name]
            _, result = await timed(side, "warm-up exec", lambda s=side: s.client.execute(specs[s.key]))
            if result is not None:
                check_result(side, result, "hi")
    check_error_budget(sides, 0)
    blocks = -(-rounds // WARM_BLOCK)
    log(f"warm exec: {rounds} runs of `{shape.cmd}` on each daemon, interleaved in blocks of {WARM_BLOCK}")
    for i in range(blocks):
        for name in round_order(i):
            side = sides[name]
            await asyncio.sleep(WARM_SETTLE_SEC)
            for k in range(min(WARM_BLOCK, rounds - i * WARM_BLOCK)):
                ms, result = await timed(side, "box_exec (warm)", lambda s=side: s.client.execute(specs[s.key]))
                if ms is not None:
                    check_result(side, result, "hi")
                    (after_idle if k == 0 else burst)[name].append(ms)
        check_error_budget(sides, max(3, rounds // 20))
    for name in SIDES:
        with contextlib.suppress(Exception):
            await sides[name].client.delete_session(specs[name].session_id)
    return {"burst": burst, "after_idle": after_idle}


async def bench_cold(sides: dict[str, Side], shape: Shape, rounds: int) -> dict[str, dict[str, list[float]]]:
    keys = ("create", "first_exec", "create_first_exec", "delete", "implicit_first_exec")
    samples: dict[str, dict[str, list[float]]] = {name: {k: [] for k in keys} for name in SIDES}
    log(f"cold start: {rounds} rounds of create_session + first exec + delete on each daemon, interleaved")
    for i in range(rounds):
        for name in round_order(i):
            side, out = sides[name], samples[name]
            spec = shape.spec(name, f"bench-{shape.run_id}-cold-{i}")
            create_ms, _ = await timed(
                side, "box_create_session (cold)", lambda s=side, p=spec: s.client.create_session(p)
            )
            if create_ms is None:
                continue
            exec_ms, result = await timed(side, "box_exec (first)", lambda s=side, p=spec: s.client.execute(p))
            if exec_ms is not None:
                check_result(side, result, "hi")
                out["create"].append(create_ms)
                out["first_exec"].append(exec_ms)
                out["create_first_exec"].append(create_ms + exec_ms)
            delete_ms, _ = await timed(
                side, "box_delete_session", lambda s=side, p=spec: s.client.delete_session(p.session_id)
            )
            if delete_ms is not None:
                out["delete"].append(delete_ms)
        # LangBot's exec tool does not create sessions first: box_exec on an unknown id creates it.
        for name in round_order(i + 1):
            side, out = sides[name], samples[name]
            spec = shape.spec(name, f"bench-{shape.run_id}-implicit-{i}")
            ms, result = await timed(side, "box_exec (implicit create)", lambda s=side, p=spec: s.client.execute(p))
            if ms is not None:
                check_result(side, result, "hi")
                out["implicit_first_exec"].append(ms)
            await timed(side, "box_delete_session", lambda s=side, p=spec: s.client.delete_session(p.session_id))
        check_error_budget(sides, max(2, rounds // 3))
    return samples


# ── pool hit / pool miss ─────────────────────────────────────────────────


async def their_default_spec_works(side: Side, shape: Shape) -> tuple[bool, str]:
    """Whether LangBot's bare default spec (read-only rootfs, no host mount) can exec on ``side``."""
    spec = shape.pool_spec(side.key, f"bench-{shape.run_id}-probe")
    try:
        result = await side.client.execute(spec)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await side.client.delete_session(spec.session_id)
    status = getattr(result.status, "value", result.status)
    ok = status == "completed" and result.exit_code == 0 and result.stdout.strip() == "hi"
    return ok, f"status={status} exit_code={result.exit_code} stderr={result.stderr.strip()[:160]!r}"


async def bench_pool(sides: dict[str, Side], shape: Shape, rounds: int, watch: PoolWatch) -> dict[str, Any]:
    """Create + first exec with a spec our warm pool serves (hit) and one it does not (miss).

    Before every timed measurement, on either daemon, our pool is waited for until it is full,
    so a refill never runs during a measurement. Our ``box_status`` hit/miss counters are read
    around every one of our creations: each round is proven a hit or a miss, not assumed.
    """
    their_ro, probe = await their_default_spec_works(sides[THEIRS], shape)
    log(
        "theirs with LangBot's default spec (read-only rootfs, no host mount): "
        + ("works" if their_ro else f"fails ({probe}); using read_only_rootfs=false on theirs")
    )
    keys = ("create", "first_exec", "create_first_exec")
    samples = {name: {kind: {k: [] for k in keys} for kind in ("hit", "miss")} for name in SIDES}
    proof = {kind: {"rounds": 0, "confirmed": 0, "other": []} for kind in ("hit", "miss")}
    log(f"pool: {rounds} hit rounds and {rounds} miss rounds of create_session + first exec, interleaved")
    for i in range(rounds):
        for kind in ("hit", "miss"):
            memory_mb = 512 if kind == "hit" else 256
            for name in round_order(i + (kind == "miss")):
                side, out = sides[name], samples[name][kind]
                spec = shape.pool_spec(
                    name,
                    f"bench-{shape.run_id}-pool{kind}-{i}",
                    memory_mb=memory_mb,
                    read_only_rootfs=True if name == OURS else their_ro,
                )
                before = await watch.settle()
                create_ms, _ = await timed(
                    side, f"box_create_session (pool {kind})", lambda s=side, p=spec: s.client.create_session(p)
                )
                exec_ms, result = (None, None)
                if create_ms is not None:
                    exec_ms, result = await timed(
                        side, f"box_exec (pool {kind})", lambda s=side, p=spec: s.client.execute(p)
                    )
                if exec_ms is not None:
                    check_result(side, result, "hi")
                counted = True
                if name == OURS and before is not None:
                    after = await pool_status(side) or {}
                    hits = after.get("hits", 0) - before.get("hits", 0)
                    misses = after.get("misses", 0) - before.get("misses", 0)
                    proof[kind]["rounds"] += 1
                    actual = "hit" if (hits, misses) == (1, 0) else "miss" if (hits, misses) == (0, 1) else "?"
                    if actual == kind:
                        proof[kind]["confirmed"] += 1
                    else:
                        proof[kind]["other"].append({"round": i, "hits_delta": hits, "misses_delta": misses})
                        side.errors.append(
                            f"pool {kind} round {i}: counters moved by hits={hits} misses={misses} "
                            f"(pool before: {before})"
                        )
                        counted = False  # not the kind of round it was meant to be: keep it out of the figures
                if counted and create_ms is not None and exec_ms is not None:
                    out["create"].append(create_ms)
                    out["first_exec"].append(exec_ms)
                    out["create_first_exec"].append(create_ms + exec_ms)
                await timed(side, "box_delete_session", lambda s=side, p=spec: s.client.delete_session(p.session_id))
        check_error_budget(sides, max(2, rounds // 2))
    final = await pool_status(sides[OURS])
    return {
        "samples": samples,
        "proof": proof,
        "theirs_read_only_rootfs": their_ro,
        "theirs_default_spec_probe": probe,
        "pool_status_after": final,
    }


# ── parallel create + first exec ─────────────────────────────────────────


async def _create_and_exec(side: Side, spec: Any, t0: float) -> dict[str, Any]:
    out: dict[str, Any] = {"session_id": spec.session_id}
    start = time.perf_counter()
    try:
        await call_action(side, "box_create_session", spec.model_dump(mode="json"))
        out["create_done_s"] = time.perf_counter() - t0
        out["create_ms"] = (time.perf_counter() - start) * 1000
        result = await side.client.execute(spec)
    except Exception as exc:
        side.errors.append(f"parallel create + exec {spec.session_id}: {type(exc).__name__}: {exc}")
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    check_result(side, result, "hi")
    out["done_s"] = time.perf_counter() - t0
    return out


async def bench_parallel(
    sides: dict[str, Side], shape: Shape, counts: list[int], rounds: int, watch: PoolWatch, rss: bool
) -> dict[str, Any]:
    """N sessions at once (asyncio.gather of create_session + first exec); wall time to all done."""
    wall: dict[str, dict[int, list[float]]] = {name: {n: [] for n in counts} for name in SIDES}
    detail: dict[str, dict[int, list[Any]]] = {name: {n: [] for n in counts} for name in SIDES}
    over_15s: dict[str, dict[int, int]] = {name: dict.fromkeys(counts, 0) for name in SIDES}
    delete_wall: dict[str, dict[int, list[float]]] = {name: {n: [] for n in counts} for name in SIDES}
    rss_live: dict[str, Any] = {}
    biggest = max(counts)
    for idx, n in enumerate(counts):
        log(f"parallel: {rounds} round(s) of {n} concurrent create_session + first exec on each daemon")
        for r in range(rounds):
            for name in round_order(idx + r):
                side = sides[name]
                before = await watch.settle()
                specs = [shape.spec(name, f"bench-{shape.run_id}-par{n}-{r}-{k}") for k in range(n)]
                t0 = time.perf_counter()
                results = await asyncio.gather(*(_create_and_exec(side, spec, t0) for spec in specs))
                elapsed = (time.perf_counter() - t0) * 1000
                failed = [x for x in results if "error" in x]
                if not failed:
                    wall[name][n].append(elapsed)
                over_15s[name][n] += sum(1 for x in results if x.get("create_ms", 0) > 15000)
                hits = None
                if name == OURS and before is not None:
                    hits = (await pool_status(side) or {}).get("hits", 0) - before.get("hits", 0)
                detail[name][n].append(
                    {
                        "wall_ms": elapsed,
                        "failed": len(failed),
                        "pool_hits": hits,
                        "create_ms": sorted(round(x["create_ms"], 1) for x in results if "create_ms" in x),
                    }
                )
                if rss and n == biggest and r == 0:
                    live = await side.client.get_sessions()
                    rss_live[name] = {"live_sessions": len(live), **process_memory(side.daemon.proc.pid)}
                t1 = time.perf_counter()
                await asyncio.gather(
                    *(
                        _delete_quietly(side, spec.session_id)
                        for spec in specs
                        if any(x["session_id"] == spec.session_id and "create_ms" in x for x in results)
                    )
                )
                delete_wall[name][n].append((time.perf_counter() - t1) * 1000)
                log(
                    f"  {side.name}: {n} sessions in {elapsed / 1000:.2f} s"
                    + (f" ({hits} from the warm pool)" if hits is not None else "")
                    + (f", {len(failed)} failed" if failed else "")
                    + f"; deleted in {delete_wall[name][n][-1] / 1000:.2f} s"
                )
            check_error_budget(sides, 4)
    return {
        "wall_ms": wall,
        "delete_wall_ms": delete_wall,
        "creates_over_15s": over_15s,
        "rounds": detail,
        "rss_live": rss_live,
        "rss_live_sessions": biggest,
    }


async def _delete_quietly(side: Side, session_id: str) -> None:
    try:
        await call_action(side, "box_delete_session", {"session_id": session_id})
    except Exception as exc:
        side.errors.append(f"delete {session_id}: {type(exc).__name__}: {exc}")


# ── managed-process relay ────────────────────────────────────────────────


class _Relay:
    def __init__(self, side: Side, session_id: str, url: str, ws: Any) -> None:
        self.side, self.session_id, self.url, self.ws = side, session_id, url, ws
        self.extensions = ws.response.headers.get("Sec-WebSocket-Extensions") if ws.response else None

    async def round_trip(self, line: str, timeout: float = 10.0) -> float | None:
        start = time.perf_counter()
        try:
            await self.ws.send(line)
            reply = await asyncio.wait_for(self.ws.recv(), timeout)
        except Exception as exc:
            self.side.errors.append(f"relay round trip: {type(exc).__name__}: {exc}")
            self.ws = None
            return None
        ms = (time.perf_counter() - start) * 1000
        if reply != line:  # LangBot 0.5's relay sends each stdout line minus its newline, as text
            self.side.errors.append(f"relay echoed {reply!r:.200} for {line!r}")
            self.ws = None  # out of step: stop using this relay
            return None
        return ms


async def _open_relay(side: Side, shape: Shape) -> _Relay:
    from langbot_plugin.box.models import BoxManagedProcessSpec
    from websockets.asyncio.client import connect
    from websockets.typing import Subprotocol

    spec = shape.spec(side.key, f"bench-{shape.run_id}-relay")
    await side.client.create_session(spec)
    info = await side.client.start_managed_process(spec.session_id, BoxManagedProcessSpec(command="cat"))
    url = side.client.get_managed_process_websocket_url(
        spec.session_id, f"http://127.0.0.1:{side.daemon.port}", info.process_id
    )
    # As MCP's websocket client connects: subprotocol "mcp", the library's other defaults.
    ws = await connect(url, subprotocols=[Subprotocol("mcp")], open_timeout=20)
    if ws.subprotocol != "mcp":
        side.errors.append(f"relay negotiated subprotocol {ws.subprotocol!r}, not 'mcp'")
    return _Relay(side, spec.session_id, url, ws)


async def _close_relay(relay: _Relay) -> None:
    side = relay.side
    if relay.ws is not None:
        with contextlib.suppress(Exception):
            await relay.ws.close()
    with contextlib.suppress(Exception):
        await side.client.stop_managed_process(relay.session_id)
    with contextlib.suppress(Exception):
        await side.client.delete_session(relay.session_id)


async def bench_relay(sides: dict[str, Side], shape: Shape, rounds: int, warmup: int = 20) -> dict[str, Any]:
    """Round trip of one JSON line through each daemon's managed-process relay to ``cat`` and back."""
    relays: dict[str, _Relay] = {}
    samples: dict[str, list[float]] = {OURS: [], THEIRS: []}
    try:
        for name in SIDES:
            try:
                relays[name] = await _open_relay(sides[name], shape)
            except Exception as exc:
                raise BenchError(f"{sides[name].name}: could not open the relay: {type(exc).__name__}: {exc}") from exc
        # The first line also waits for `cat` to be up (docker exec -i on theirs): untimed, generous.
        for i in range(warmup):
            for name in round_order(i):
                line = json.dumps({"jsonrpc": "2.0", "id": f"warmup-{i}", "method": "ping"}, separators=(",", ":"))
                if relays[name].ws is not None:
                    await relays[name].round_trip(line, timeout=30.0 if i == 0 else 10.0)
        check_error_budget(sides, 0)
        log(f"relay: {rounds} round trips of one JSON line through `cat` on each daemon, interleaved")
        for i in range(rounds):
            for name in round_order(i):
                relay = relays[name]
                if relay.ws is None:
                    continue
                line = json.dumps({"jsonrpc": "2.0", "id": i, "method": "ping"}, separators=(",", ":"))
                ms = await relay.round_trip(line)
                if ms is not None:
                    samples[name].append(ms)
        return {
            "samples": samples,
            "urls": {name: r.url for name, r in relays.items()},
            "extensions": {name: r.extensions for name, r in relays.items()},
        }
    finally:
        for relay in relays.values():
            await _close_relay(relay)


# ── memory ───────────────────────────────────────────────────────────────


async def measure_idle_rss(sides: dict[str, Side], watch: PoolWatch) -> dict[str, Any]:
    await watch.settle()
    await asyncio.sleep(1.0)
    out = {}
    for name in SIDES:
        side = sides[name]
        live = await side.client.get_sessions()
        out[name] = {"live_sessions": len(live), **process_memory(side.daemon.proc.pid)}
    return out
