"""Which channel should the daemon use to talk to the agent inside a container?

Two candidates, measured here in one interleaved run against the same image:

- the container's **attach stream**: PID 1's stdin/stdout, proxied by dockerd (hijacked HTTP
  connection from the Engine API);
- a **unix socket** in a host directory bind-mounted into the container (what boxruntime uses).

Each side runs the same tiny echo loop as PID 1 (a line in, the same line out), so only the
channel differs. Also printed: reconnecting after the connection drops, which matters for
"a lost connection is re-established without losing the session".

Run:  .venv/bin/python bench/bench_agent_channel.py [--rounds 500] [--runtime runsc]

With ``--runtime runsc`` both containers run under gVisor (registered by ./dev with
--host-uds=create, without which the socket never appears on the host). The socket side reads
through a buffered file, as the agent does: an unbuffered ``readline`` makes one system call
per byte, which gVisor's ptrace platform makes costly (~0.1 ms each here).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker

IMAGE = "boxruntime/sandbox:latest"
ECHO_STDIN = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line); sys.stdout.flush()\n"
ECHO_SOCKET = (
    "import os, socket, sys\n"
    "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1] + '.tmp'); s.listen(4)\n"
    "try:\n"
    "    os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "except PermissionError:\n"  # gVisor cannot rename a host socket (as in the agent)
    "    s.close(); s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4)\n"
    "while True:\n"
    "    c, _ = s.accept(); f = c.makefile('rwb')\n"
    "    for line in f:\n"
    "        f.write(line); f.flush()\n"
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class AttachChannel:
    def __init__(self, client: docker.DockerClient, runtime: str) -> None:
        self.container = client.containers.run(
            IMAGE,
            ["python3", "-u", "-c", ECHO_STDIN],
            detach=True,
            stdin_open=True,
            network_mode="none",
            runtime=runtime,
        )
        self.sock = self._attach()

    def _attach(self) -> socket.socket:
        raw = self.container.attach_socket(params={"stdin": 1, "stdout": 1, "stream": 1})
        sock: socket.socket = raw._sock  # the hijacked connection under the HTTP response
        sock.settimeout(10)
        return sock

    def round_trip(self, payload: bytes) -> None:
        self.sock.sendall(payload)
        received = b""
        while not received.endswith(b"\n"):
            # Non-tty attach multiplexes: an 8-byte header (stream, size) before each chunk.
            header = self._exactly(8)
            received += self._exactly(int.from_bytes(header[4:], "big"))

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("attach stream closed")
            data += chunk
        return data

    def reconnect(self) -> None:
        self.sock.close()
        self.sock = self._attach()

    def close(self) -> None:
        self.sock.close()
        self.container.remove(force=True)


class SocketChannel:
    def __init__(self, client: docker.DockerClient, directory: Path, runtime: str) -> None:
        self.path = directory / "echo.sock"
        directory.chmod(0o777)
        self.container = client.containers.run(
            IMAGE,
            ["python3", "-u", "-c", ECHO_SOCKET, "/run/echo/echo.sock"],
            detach=True,
            network_mode="none",
            runtime=runtime,
            volumes={str(directory): {"bind": "/run/echo", "mode": "rw"}},
        )
        deadline = time.monotonic() + 30
        while not self.path.exists():
            if time.monotonic() > deadline:
                self.container.remove(force=True)
                raise TimeoutError("echo socket did not appear")
            time.sleep(0.01)
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(self.path))
        return sock

    def round_trip(self, payload: bytes) -> None:
        self.sock.sendall(payload)
        received = b""
        while not received.endswith(b"\n"):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("socket closed")
            received += chunk

    def reconnect(self) -> None:
        self.sock.close()
        self.sock = self._connect()

    def close(self) -> None:
        self.sock.close()
        self.container.remove(force=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--runtime", default="runc", help="the engine's runtime for both containers")
    args = parser.parse_args(argv)
    client = docker.from_env()
    client.images.get(IMAGE)
    payload = b'{"op": "ping", "id": "p1"}\n'
    with tempfile.TemporaryDirectory(prefix="boxruntime-channel-") as tmp:
        channels: dict[str, AttachChannel | SocketChannel] = {}
        try:
            channels["attach stream"] = AttachChannel(client, args.runtime)
            channels["unix socket"] = SocketChannel(client, Path(tmp), args.runtime)
            times: dict[str, list[float]] = {name: [] for name in channels}
            reconnects: dict[str, list[float]] = {name: [] for name in channels}
            for channel in channels.values():
                for _ in range(20):
                    channel.round_trip(payload)  # warm up
            for i in range(args.rounds):
                order = list(channels.items()) if i % 2 else list(reversed(channels.items()))
                for name, channel in order:
                    start = time.perf_counter()
                    channel.round_trip(payload)
                    times[name].append((time.perf_counter() - start) * 1000)
            for _ in range(20):
                for name, channel in channels.items():
                    start = time.perf_counter()
                    channel.reconnect()
                    channel.round_trip(payload)
                    reconnects[name].append((time.perf_counter() - start) * 1000)
        finally:
            for channel in channels.values():
                channel.close()
    print(f"{'channel':<15} {'RTT p50':>9} {'RTT p95':>9} {'reconnect+RTT p50':>18}")
    for name in channels:
        print(
            f"{name:<15} {statistics.median(times[name]):8.3f}ms {pct(times[name], 0.95):8.3f}ms"
            f" {statistics.median(reconnects[name]):17.3f}ms"
        )
    ratio = statistics.median(times["attach stream"]) / statistics.median(times["unix socket"])
    print(f"unix socket round trip is {ratio:.1f}x faster than the attach stream (one interleaved run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
