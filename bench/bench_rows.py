"""The table's rows and footnotes, from the results of bench_exec.py's sections."""

from __future__ import annotations

import argparse
from typing import Any

from bench_harness import OURS, THEIRS, Shape
from bench_report import Footnotes, Row, mean, median, pct, pct_row
from bench_sections import WARM_BLOCK, WARM_SETTLE_SEC


def build_rows(args: argparse.Namespace, shape: Shape, res: dict[str, Any]) -> tuple[list[Row], Footnotes]:
    rows: list[Row] = []
    notes = Footnotes()
    warm, idle = res["warm"]["burst"], res["warm"]["after_idle"]
    m = notes.add(
        f"one session per daemon, `{shape.cmd}` through LangBot's client, in alternating blocks of "
        f"{WARM_BLOCK} with a {WARM_SETTLE_SEC:g} s pause before each block: 'back to back' = the rest of "
        "each block, 'after idle' = the first exec of each block."
    )
    n, k = len(warm[OURS]), len(idle[OURS])
    rows += [
        pct_row("warm_exec_p50_ms", f"warm exec p50, back to back {m} (n={n})", warm, 50),
        pct_row("warm_exec_p95_ms", f"warm exec p95, back to back (n={n})", warm, 95),
        Row("warm_exec_mean_ms", "warm exec mean, back to back", "ms", mean(warm[OURS]), mean(warm[THEIRS])),
        pct_row("warm_exec_idle_p50_ms", f"warm exec p50, after idle (n={k})", idle, 50),
    ]
    if "breakdown" in res:
        rows += breakdown_rows(res["breakdown"], notes, shape)
    if "warm_stdio" in res:
        warm, idle = res["warm_stdio"]["burst"], res["warm_stdio"]["after_idle"]
        m = notes.add(
            "the same measurement with both daemons spawned by LangBot's own StdioClientController "
            "(`boxruntime serve --stdio`, `lbp box -s`): the transport LangBot uses for a local Box runtime "
            "on Linux. The rows above use the websocket, as LangBot does for a remote or containerised runtime."
        )
        n, k = len(warm[OURS]), len(idle[OURS])
        rows += [
            pct_row("warm_exec_stdio_p50_ms", f"warm exec p50 over stdio, back to back {m} (n={n})", warm, 50),
            pct_row("warm_exec_stdio_p95_ms", f"warm exec p95 over stdio, back to back (n={n})", warm, 95),
            pct_row("warm_exec_stdio_idle_p50_ms", f"warm exec p50 over stdio, after idle (n={k})", idle, 50),
        ]
    if "relay" in res:
        s = res["relay"]["samples"]
        n = args.relay
        m = notes.add(
            "managed process `cat` in a session of the bench's spec; one compact JSON-RPC line sent over the "
            "relay websocket (websockets library, subprotocol mcp, its default options, as MCP's websocket "
            "client) and the same line received back, timed from send to receive; interleaved, after 20 "
            f"untimed round trips. Negotiated extensions: ours {res['relay']['extensions'].get(OURS)!r}, "
            f"theirs {res['relay']['extensions'].get(THEIRS)!r}."
        )
        rows += [
            pct_row("relay_rtt_p50_ms", f"relay round trip p50 {m} (n={n})", s, 50),
            pct_row("relay_rtt_p95_ms", f"relay round trip p95 {m} (n={n})", s, 95),
        ]
    cold = res["cold"]
    served = res.get("cold_pool")
    m = notes.add(
        f"a new session of the bench's '{shape.mode}' spec each round, one after the other, no waiting for "
        "our pool to refill: "
        + (
            f"our pool served {served['hits']} of the section's {served['hits'] + served['misses']} creations "
            "(any other started a new container). The pool-miss row below is always a new container."
            if served
            else "our pool is off."
        )
    )
    cold_rows = [
        ("cold_create_first_exec_median_ms", f"new session: create + first exec {m}, median", "create_first_exec"),
        ("cold_create_session_median_ms", "  of which create_session, median", "create"),
        ("cold_first_exec_median_ms", "  of which first exec, median", "first_exec"),
        (
            "cold_implicit_first_exec_median_ms",
            "exec on new session id (implicit create), median",
            "implicit_first_exec",
        ),
        ("delete_session_median_ms", "delete_session, median", "delete"),
    ]
    rows += [
        Row(key, f"{label} (n={args.cold})", "ms", median(cold[OURS][k]), median(cold[THEIRS][k]))
        for key, label, k in cold_rows
    ]
    if "pool" in res:
        pool = res["pool"]
        s = pool["samples"]
        proof = pool["proof"]
        theirs_shape = (
            "the same spec"
            if pool["theirs_read_only_rootfs"]
            else "the same spec but read_only_rootfs=false, the closest shape that works there: LangBot's "
            f"default spec fails every exec on lbp box ({pool['theirs_default_spec_probe']})"
        )
        markers = {
            "hit": notes.add(
                f"pool hit: ours gets LangBot's default spec (read_only_rootfs=true, no host mount, no extra "
                f"mounts, network off, cpus 1, memory 512 MB, pids 128, no quota) with image {shape.image}; "
                f"theirs gets {theirs_shape}. Theirs has no pool. Our pool ({args.pool_size} sandboxes) is "
                "waited for until full before every measurement on either daemon. Our box_status counters "
                f"prove the rounds: {proof['hit']['confirmed']}/{proof['hit']['rounds']} hit rounds moved "
                f"`hits` by 1, {proof['miss']['confirmed']}/{proof['miss']['rounds']} miss rounds moved "
                f"`misses` by 1 (a round that did not is left out of the figures and reported as an error); "
                f"pool at the end of the section: {pool['pool_status_after']}."
            ),
            "miss": notes.add("pool miss: the same specs with memory_mb=256, which our pool does not serve."),
        }
        for kind in ("hit", "miss"):
            n_ours, n_theirs = len(s[OURS][kind]["create"]), len(s[THEIRS][kind]["create"])
            n = f"n={n_ours}" if n_ours == n_theirs else f"n={n_ours}/{n_theirs}"
            parts = (
                ("create_first_exec", "create_first_exec", f"create + first exec, pool {kind} {markers[kind]}"),
                ("create_session", "create", "  of which create_session"),
            )
            rows += [
                Row(
                    f"pool_{kind}_{key}_median_ms",
                    f"{label}, median ({n})",
                    "ms",
                    median(s[OURS][kind][sample]),
                    median(s[THEIRS][kind][sample]),
                )
                for key, sample, label in parts
            ]
    if "parallel" in res:
        par = res["parallel"]
        r = args.parallel_rounds
        over = ", ".join(
            f"N={n}: ours {par['creates_over_15s'][OURS][n]}, theirs {par['creates_over_15s'][THEIRS][n]}"
            for n in args.parallel
        )
        hits = ", ".join(
            f"N={n}: {'/'.join(str(d['pool_hits']) for d in par['rounds'][OURS][n])}" for n in args.parallel
        )
        m = notes.add(
            f"asyncio.gather of N x (box_create_session + box_exec `{shape.cmd}`) on N new session ids "
            f"(the bench's '{shape.mode}' spec), from the first call to the last reply; then all N are "
            f"deleted at once (not in the figure; in the JSON). Our pool ({args.pool_size} sandboxes, full "
            f"before each round) served, per round: {hits}; the rest were new containers. LangBot's "
            "create_session wrapper gives up after 15 s, so the same action goes through the same client "
            f"with a 180 s timeout; creations that took over 15 s (LangBot would have failed them): {over}."
        )
        for n in args.parallel:
            rows.append(
                Row(
                    f"parallel_{n}_create_first_exec_wall_ms",
                    f"{n} parallel create + first exec, wall {m}" + (f", median (n={r})" if r > 1 else ""),
                    "ms",
                    median(par["wall_ms"][OURS][n]),
                    median(par["wall_ms"][THEIRS][n]),
                )
            )
    if "rss_idle" in res:
        idle = res["rss_idle"]
        m = notes.add(
            "resident set size of the daemon process alone (psutil): ours = the `python -m boxruntime serve` "
            "process, theirs = the `lbp box` process. Sandboxes are not counted (containers; nsjail and "
            "`docker exec` children are listed in the JSON but not counted). Idle = connected, no session, "
            "our pool full; live = right after the largest parallel round's last reply, before its deletion."
        )
        rows.append(Row("rss_idle_mib", f"daemon RSS, idle {m}", "MiB", idle[OURS]["rss_mib"], idle[THEIRS]["rss_mib"]))
        live = res.get("parallel", {}).get("rss_live", {})
        if OURS in live and THEIRS in live:
            n = res["parallel"]["rss_live_sessions"]
            rows.append(
                Row(
                    f"rss_{n}_sessions_mib",
                    f"daemon RSS, {n} live sessions {m}",
                    "MiB",
                    live[OURS]["rss_mib"],
                    live[THEIRS]["rss_mib"],
                )
            )
    return rows, notes


def breakdown_rows(parts: dict[str, list[float]], notes: Footnotes, shape: Shape) -> list[Row]:
    """Ours only: the exec next to its floors, all back to back in blocks like the warm section."""
    m = notes.add(
        f"ours only, each back to back in its own blocks of {WARM_BLOCK}: `{shape.cmd}` through LangBot's "
        "client; a no-op action (box_get_session) through LangBot's client, i.e. its client, the websocket "
        "and our dispatch; the same command run by the session's agent, asked directly over its unix socket "
        "by this process; one ping of that agent (the hop alone). Where the exec's p50 is close to the sum of "
        "the two floors, the daemon adds next to nothing beyond passing the command on (this process runs "
        "asyncio's default loop, the daemon uvloop, so the sum may even exceed the exec)."
    )
    p50 = {kind: pct(samples, 50) for kind, samples in parts.items()}
    n = len(parts["exec"])

    def ours_row(key: str, label: str, value: float | None) -> Row:
        return Row(key, label, "ms", value, None)

    floors = None
    if p50["noop"] is not None and p50["agent_run"] is not None:
        floors = p50["noop"] + p50["agent_run"]
    return [
        ours_row("parts_exec_p50_ms", f"ours' warm exec, in parts {m}: the exec, p50 (n={n})", p50["exec"]),
        ours_row("parts_noop_p50_ms", "  LangBot's client + websocket + dispatch (no-op action), p50", p50["noop"]),
        ours_row("parts_agent_run_p50_ms", "  the agent running the command, asked directly, p50", p50["agent_run"]),
        ours_row("parts_agent_ping_p50_ms", "    of which the hop to the agent and back, p50", p50["agent_ping"]),
        ours_row("parts_floors_sum_ms", "  no-op + agent run (the two floors, added)", floors),
    ]
