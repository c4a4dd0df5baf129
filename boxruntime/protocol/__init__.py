"""Action RPC: LangBot's JSON message protocol over stdio and WebSocket.

The envelope and both framings are pure (sans-I/O); ``Peer`` is the one async endpoint,
over a ``Connection`` (``StreamConnection`` for stdio/pipes, ``WebSocketConnection``).
"""

from boxruntime.protocol.connection import Connection, StreamConnection, WebSocketConnection
from boxruntime.protocol.envelope import MAX_MESSAGE_BYTES, error_message
from boxruntime.protocol.peer import DEFAULT_TIMEOUT, ActionHandler, Payload, Peer, call_unary

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "ActionHandler",
    "Connection",
    "Payload",
    "Peer",
    "StreamConnection",
    "WebSocketConnection",
    "call_unary",
    "error_message",
]
