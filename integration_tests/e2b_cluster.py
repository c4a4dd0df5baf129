"""An "E2B cluster" for the e2b backend's tests: a second ``boxruntime serve`` (Docker, with a
token) whose E2B front door the e2b backend talks to exactly as it would to E2B's cloud, through
E2B's own SDK. Both ends are our code; the client in the middle is E2B's, so each side is held
to E2B's contract.

``e2b_daemon`` starts the cluster and then the daemon under test (``--backend e2b``) pointed at
it the way a user would: ``E2B_API_URL`` = ``E2B_SANDBOX_URL`` = the cluster, ``E2B_API_KEY`` its
token. Which sandboxes the daemon under test keeps is asked of the cluster's E2B API, by the
metadata every sandbox of that daemon's data dir carries (``sandboxes_on_cluster``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from boxruntime.backends.e2b.mapping import META_SITE, site_id
from integration_tests.daemon import Daemon, start_daemon
from integration_tests.e2b_site import E2BSite, e2b_site

# The daemons of this test process that serve the e2b backend, by data dir: their cluster.
_CLUSTERS: dict[Path, E2BSite] = {}


def backend_env(cluster: E2BSite) -> dict[str, str]:
    """What a user sets to run the e2b backend against this cluster."""
    return {**cluster.env(), "BOXRUNTIME_E2B_TIMEOUT_SEC": "300"}


def register(data_dir: Path, cluster: E2BSite) -> None:
    _CLUSTERS[data_dir.resolve()] = cluster


def unregister(data_dir: Path) -> None:
    _CLUSTERS.pop(data_dir.resolve(), None)


def sandboxes_on_cluster(data_dir: Path) -> list[str]:
    """The E2B sandboxes the e2b-backend daemon(s) of ``data_dir`` have on their cluster."""
    cluster = _CLUSTERS[data_dir.resolve()]
    query = {"metadata": f"{META_SITE}={site_id(data_dir)}"}
    answer = httpx.get(
        f"{cluster.daemon.http}/v2/sandboxes", params=query, headers={"X-API-KEY": cluster.api_key}, timeout=30
    )
    answer.raise_for_status()
    listed: list[dict[str, Any]] = answer.json()
    return sorted(str(s["sandboxID"]) for s in listed)


@contextlib.contextmanager
def e2b_cluster(data_dir: Path) -> Iterator[E2BSite]:
    """The cluster: a Docker daemon with a token and a warm pool, its state in ``data_dir``; on
    the way out it must exit cleanly and leave no sandbox (e2b_site checks)."""
    with e2b_site(data_dir, "docker", with_token=True) as cluster:
        yield cluster


@contextlib.contextmanager
def served_by(cluster: E2BSite, data_dir: Path) -> Iterator[None]:
    """The e2b-backend daemon(s) of ``data_dir`` run their sandboxes on ``cluster``; on the way
    out none of theirs may be left there."""
    register(data_dir, cluster)
    try:
        yield
        assert sandboxes_on_cluster(data_dir) == []
    finally:
        unregister(data_dir)


@contextlib.contextmanager
def e2b_daemon(
    cluster: E2BSite,
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    token: str | None = None,
    backend: str = "e2b",
) -> Iterator[Daemon]:
    """A daemon on ``data_dir`` serving ``--backend e2b`` (or ``local``, for a client's box_init
    to choose e2b) against ``cluster``. On the way out it must exit cleanly and leave no sandbox
    on the cluster."""
    with served_by(cluster, data_dir):
        extra = {**backend_env(cluster), **(env or {})}
        daemon = start_daemon(data_dir, "--backend", backend, *args, token=token, env=extra)
        try:
            yield daemon
        finally:
            code = daemon.stop()
            assert code == 0, f"exit status {code}:\n{daemon.log()[-3000:]}"
