"""The daemon's Prometheus metrics, served at ``/metrics`` (``boxruntime.edges.server``).

One ``Metrics`` per runtime, in a registry of its own (never prometheus_client's global one): a
process that runs several runtimes, as the tests do, keeps their counts apart. Counters are
incremented where things happen (the runtime, the relay, the Peer's failure hook, the HTTP
middleware); what exists right now (sessions, managed processes, the warm pool) is read from the
runtime when a scrape asks, so it can never drift from the truth.

Label values come from closed sets (backend names, end reasons, catalogue action names, Box
error names, route templates), never from a caller's text: a client cannot grow the series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from boxruntime.errors import wire_name
from boxruntime.models.actions import BY_NAME

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A command's end-to-end time: from the request to its result, a new sandbox included.
EXEC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
SESSION_STATES = ("idle", "running", "closing")
_PROTOCOL_ACTIONS = frozenset({"__cancel_action", "__stream_ack"})


@dataclass(frozen=True)
class Live:
    """What the runtime holds right now, read at each scrape."""

    sessions: Callable[[], Iterable[tuple[str, str]]]  # (backend, state) of every session
    managed_processes: Callable[[], Iterable[str]]  # the backend of every running process
    pool: Callable[[], tuple[int, int] | None]  # (ready, size) of the warm pool, if any
    backend: Callable[[], str | None]  # the selected backend's name


class _LiveCollector(Collector):
    def __init__(self, live: Live) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        sessions = GaugeMetricFamily(
            "boxruntime_sessions", "Sessions by backend and state", labels=["backend", "state"]
        )
        counts: dict[tuple[str, str], int] = {}
        backend = self._live.backend()
        if backend is not None:  # every state of the selected backend, zero included
            counts = {(backend, state): 0 for state in SESSION_STATES}
        for key in self._live.sessions():
            counts[key] = counts.get(key, 0) + 1
        for (name, state), count in sorted(counts.items()):
            sessions.add_metric([name, state], count)
        yield sessions
        processes = GaugeMetricFamily(
            "boxruntime_managed_processes", "Managed processes running, by backend", labels=["backend"]
        )
        running: dict[str, int] = {backend: 0} if backend is not None else {}
        for name in self._live.managed_processes():
            running[name] = running.get(name, 0) + 1
        for name, count in sorted(running.items()):
            processes.add_metric([name], count)
        yield processes
        pool = self._live.pool()
        if pool is not None:
            yield GaugeMetricFamily("boxruntime_pool_ready", "Warm-pool sandboxes ready", value=pool[0])
            yield GaugeMetricFamily("boxruntime_pool_size", "Warm-pool sandboxes wanted", value=pool[1])


class Metrics:
    """One daemon's metrics. ``watch`` connects what is read at each scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._ended: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        r = self.registry
        self.session_creations = Counter(
            "boxruntime_session_creations",
            "Sessions created, by backend and whether the warm pool had a sandbox ready (hit) or not (miss)",
            ["backend", "pool"],
            registry=r,
        )
        self.execs = Counter(
            "boxruntime_execs",
            "Commands of box_exec and box_exec_stream that ended, by backend and end reason "
            "(exit, signal, timeout, oom, cancelled)",
            ["backend", "reason"],
            registry=r,
        )
        self.exec_seconds = Histogram(
            "boxruntime_exec_duration_seconds",
            "Time from a box_exec or box_exec_stream request to its command's end, a new sandbox included",
            ["backend"],
            buckets=EXEC_BUCKETS,
            registry=r,
        )
        self.relay_attaches = Counter(
            "boxruntime_relay_attaches", "Relay clients attached to a managed process", registry=r
        )
        self.relay_bytes = Counter(
            "boxruntime_relay_bytes",
            "Bytes relayed to a managed process's stdin (in) and from its stdout (out)",
            ["direction"],
            registry=r,
        )
        self.rpc_errors = Counter(
            "boxruntime_rpc_errors",
            "Action requests answered with an error, by action and error class",
            ["action", "error"],
            registry=r,
        )
        self.auth_failures = Counter(
            "boxruntime_auth_failures",
            "HTTP requests refused with 401 (bad or missing token, untrusted instance), by route",
            ["route"],
            registry=r,
        )
        self.readoptions = Counter(
            "boxruntime_readoptions",
            "Sessions taken over from a daemon that ran before on the same data dir",
            ["backend"],
            registry=r,
        )

    def watch(self, live: Live) -> None:
        """Read ``live`` at each scrape (once per registry)."""
        self.registry.register(_LiveCollector(live))

    def scrape(self) -> bytes:
        """The registry in Prometheus's text format."""
        return generate_latest(self.registry)

    # ── what the runtime and the edges report ────────────────────────────

    def session_created(self, backend: str, pooled: bool) -> None:
        self.session_creations.labels(backend, "hit" if pooled else "miss").inc()

    def exec_ended(self, backend: str, reason: str, seconds: float) -> None:
        # On every exec: the labelled children are looked up once (``labels`` takes a lock and
        # checks its values each time), from closed sets of labels.
        ended = self._ended.get((backend, reason))
        if ended is None:
            ended = self._ended[backend, reason] = (
                self.execs.labels(backend, reason),
                self.exec_seconds.labels(backend),
            )
        ended[0].inc()
        ended[1].observe(seconds)

    def relayed(self, direction: str, size: int) -> None:
        self.relay_bytes.labels(direction).inc(size)

    def rpc_failed(self, action: str, exc: BaseException) -> None:
        known = action in BY_NAME or action in _PROTOCOL_ACTIONS
        self.rpc_errors.labels(action if known else "(unknown)", wire_name(exc)).inc()

    def auth_failed(self, route: str) -> None:
        self.auth_failures.labels(route).inc()
