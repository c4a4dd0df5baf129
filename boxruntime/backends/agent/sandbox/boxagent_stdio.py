"""Sockets that become a process's stdio, where descriptors cannot be handed to the daemon.

Stdlib only, Python >= 3.8. Under gVisor the agent's socket is a host socket, but the pipes
of a process live inside gVisor's kernel: SCM_RIGHTS cannot carry them out (sendmsg fails with
EINVAL). So the daemon goes the other way: it opens one connection per stream (op ``stdio``),
each of which the agent keeps here instead of reading frames from it, and the spawn that
follows names them (``stdio``: stdin, stdout, stderr tokens) as the process's own stdio. The
process then reads and writes the daemon's sockets directly: no copy through the agent.
"""

from collections import OrderedDict

MAX_WAITING = 48  # sockets kept for spawns not yet made; the oldest go first


class StdioError(Exception):
    """A spawn named a stdio socket the agent does not hold."""


class StdioSockets:
    def __init__(self):
        self.waiting = OrderedDict()  # token -> socket

    def keep(self, token, sock):
        old = self.waiting.pop(token, None)
        if old is not None:
            old.close()
        self.waiting[token] = sock
        while len(self.waiting) > MAX_WAITING:
            self.waiting.popitem(last=False)[1].close()

    def take(self, tokens):
        """The sockets for [stdin, stdout, stderr] tokens (stdin may be None); all or none."""
        if not isinstance(tokens, list) or len(tokens) != 3 or tokens[1] is None or tokens[2] is None:
            raise StdioError("stdio must name [stdin or null, stdout, stderr] sockets")
        missing = [t for t in tokens if t is not None and t not in self.waiting]
        if missing:
            raise StdioError("no stdio socket %s" % ", ".join(map(str, missing)))
        return [None if t is None else self.waiting.pop(t) for t in tokens]
