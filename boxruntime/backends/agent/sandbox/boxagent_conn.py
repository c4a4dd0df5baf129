"""One daemon connection to the agent: length-prefixed frames in and out (stdlib only).

Frames are ``>II`` (header length, body length), a JSON header, raw body bytes. Outgoing frames
are queued and written once per loop iteration by the agent (``flush``); a frame may carry file
descriptors (``send_fds``, SCM_RIGHTS). A malformed or oversized frame drops the connection.
"""

import array
import json
import selectors
import socket
import struct

HEADER = struct.Struct(">II")
MAX_HEADER = 1 << 20
MAX_BODY = 32 << 20
RESUME_BELOW = 1 << 20  # a paused process's pipes are read again below this much queued output


class Conn:
    def __init__(self, agent, sock):
        self.agent = agent
        self.sock = sock
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.closed = False
        sock.setblocking(False)

    def send(self, header, body=b""):
        if self.closed:
            return
        raw = json.dumps(header, separators=(",", ":")).encode()
        self.wbuf += HEADER.pack(len(raw), len(body))
        self.wbuf += raw
        if body:
            self.wbuf += body
        # Written once per loop iteration: the frames of one command often leave together.
        self.agent.dirty.add(self)

    def send_fds(self, header, fds):
        """One frame carrying file descriptors; written at once, after anything queued."""
        self.send(header)
        self.sock.setblocking(True)
        try:
            frame = bytes(self.wbuf)
            self.wbuf.clear()
            sent = self.sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            if sent < len(frame):
                self.sock.sendall(frame[sent:])
        except OSError:
            self.agent.drop_conn(self)
        finally:
            if not self.closed:
                self.sock.setblocking(False)

    def detach(self):
        """Write what is queued, then stop being a frame connection: the socket is the
        caller's (blocking again), or None if it broke meanwhile."""
        self.sock.setblocking(True)
        try:
            self.sock.sendall(bytes(self.wbuf))
        except OSError:
            self.agent.drop_conn(self)
            return None
        self.wbuf.clear()
        self.rbuf.clear()
        self.closed = True
        return self.sock

    def flush(self):
        while self.wbuf and not self.closed:
            try:
                sent = self.sock.send(self.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.agent.drop_conn(self)
                return
            del self.wbuf[:sent]
        self.agent.update_conn_interest(self)
        if len(self.wbuf) < RESUME_BELOW:
            self.agent.resume_paused(self)

    def on_event(self, mask):
        if mask & selectors.EVENT_WRITE:
            self.flush()
        if mask & selectors.EVENT_READ and not self.closed:
            try:
                data = self.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.agent.drop_conn(self)
                return
            self.rbuf += data
            self.parse()

    def parse(self):
        while len(self.rbuf) >= HEADER.size and not self.closed:
            hlen, blen = HEADER.unpack_from(self.rbuf)
            if hlen > MAX_HEADER or blen > MAX_BODY:
                self.agent.drop_conn(self)
                return
            total = HEADER.size + hlen + blen
            if len(self.rbuf) < total:
                return
            try:
                header = json.loads(bytes(self.rbuf[HEADER.size : HEADER.size + hlen]))
            except ValueError:
                header = None
            body = bytes(self.rbuf[HEADER.size + hlen : total])
            del self.rbuf[:total]
            if isinstance(header, dict):
                self.agent.handle(self, header, body)
