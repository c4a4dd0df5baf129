"""One daemon connection to the agent: frames in and out (stdlib only, Python >= 3.8).

Frames are read and written with boxagent_wire. Outgoing frames are queued and written once
per loop iteration by the agent (``flush``); a frame may carry file descriptors (``send_fds``,
SCM_RIGHTS). An oversized frame drops the connection; one whose header is not a JSON object
is skipped.
"""

import array
import selectors
import socket

import boxagent_wire as wire

RECV_CHUNK = 262144
RESUME_BELOW = 1 << 20  # a paused process's pipes are read again below this much queued output


class Conn:
    def __init__(self, agent, sock):
        self.agent = agent
        self.sock = sock
        self.frames = wire.Decoder()
        self.wbuf = bytearray()
        self.closed = False
        sock.setblocking(False)

    def send(self, header, body=b""):
        if self.closed:
            return
        wire.encode_into(self.wbuf, header, body)
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
                data = self.sock.recv(RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.agent.drop_conn(self)
                return
            self.frames.feed(data)
            self.handle_frames()

    def handle_frames(self):
        while not self.closed:  # a frame may have detached the socket (Op.STDIO)
            try:
                frame = self.frames.next_frame()
            except wire.BadHeader:
                continue  # that frame is skipped; the stream is still in step
            except wire.FrameTooLarge:
                self.agent.drop_conn(self)
                return
            if frame is None:
                return
            self.agent.handle(self, *frame)
