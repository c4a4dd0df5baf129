"""The relay's MCP framing and request-id fence, without sockets."""

from __future__ import annotations

import json

import mcp_types as types
from hypothesis import given
from hypothesis import strategies as st
from mcp.shared.message import SessionMessage

from langbot_bridge.mcp.framing import RequestIdFence, decode, encode


def request(request_id: types.RequestId, method: str = "tools/call", **params: object) -> types.JSONRPCRequest:
    return types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params=dict(params) or None)


def test_one_message_is_one_compact_line() -> None:
    message = request(7, name="echo", arguments={"text": "two\nlines"})
    text = encode(SessionMessage(message))
    assert "\n" not in text  # the daemon adds the newline that ends the stdin line
    assert json.loads(text) == {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "two\nlines"}},
    }
    decoded = decode(text)
    assert isinstance(decoded, SessionMessage) and decoded.message == message


def test_unset_params_are_not_sent_as_null() -> None:
    assert json.loads(encode(SessionMessage(types.JSONRPCRequest(jsonrpc="2.0", id=1, method="ping")))) == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "ping",
    }


def test_bad_lines_become_exceptions_and_blank_lines_vanish() -> None:
    assert isinstance(decode("Starting server..."), Exception)
    assert isinstance(decode('{"jsonrpc": "2.0"}'), Exception)  # JSON, but no JSON-RPC message
    assert decode("") is None and decode("  \r") is None
    reply = decode('{"jsonrpc":"2.0","id":3,"result":{}}\r')  # a CRLF server's line
    assert isinstance(reply, SessionMessage) and isinstance(reply.message, types.JSONRPCResponse)


@given(st.one_of(st.integers(min_value=-(2**53), max_value=2**53), st.text(max_size=40)))
def test_wire_ids_round_trip_with_their_type(request_id: int | str) -> None:
    fence = RequestIdFence("abc")
    wire = fence.wire_id(request_id)
    assert isinstance(wire, str) and wire.startswith("abc:")
    assert fence.local_id(wire) == request_id and type(fence.local_id(wire)) is type(request_id)
    assert RequestIdFence("abd").local_id(wire) is None  # another client's tag


def test_requests_go_out_tagged_and_replies_come_back_untagged() -> None:
    fence = RequestIdFence("t1")
    out = fence.outgoing(request(5, name="echo"))
    assert isinstance(out, types.JSONRPCRequest) and out.id == "t1:i5"
    assert out.params == {"name": "echo"}
    reply = types.JSONRPCResponse(jsonrpc="2.0", id="t1:i5", result={"ok": True})
    back = fence.incoming(reply)
    assert isinstance(back, types.JSONRPCResponse) and back.id == 5 and back.result == {"ok": True}
    error = types.JSONRPCError(jsonrpc="2.0", id="t1:i6", error=types.ErrorData(code=-32602, message="no"))
    back_error = fence.incoming(error)
    assert isinstance(back_error, types.JSONRPCError) and back_error.id == 6
    assert fence.dropped == 0


def test_replies_for_other_clients_are_dropped_and_counted() -> None:
    fence = RequestIdFence("mine")
    stale: list[types.JSONRPCMessage] = [
        types.JSONRPCResponse(jsonrpc="2.0", id=2, result={}),  # a plain id: an untagged client's
        types.JSONRPCResponse(jsonrpc="2.0", id="theirs:i2", result={}),
        types.JSONRPCError(jsonrpc="2.0", id="mine", error=types.ErrorData(code=1, message="x")),  # malformed
    ]
    assert [fence.incoming(m) for m in stale] == [None, None, None]
    assert fence.dropped == 3
    unknown = types.JSONRPCError(jsonrpc="2.0", id=None, error=types.ErrorData(code=-32700, message="parse error"))
    assert fence.incoming(unknown) is unknown  # "could not tell which request" still reaches the session


def test_progress_tokens_and_cancellations_follow_the_request_ids() -> None:
    fence = RequestIdFence("p")
    out = fence.outgoing(request(9, name="slow", _meta={"progressToken": 9}))
    assert isinstance(out, types.JSONRPCRequest) and out.params is not None
    assert out.params["_meta"] == {"progressToken": "p:i9"}
    progress = types.JSONRPCNotification(
        jsonrpc="2.0", method="notifications/progress", params={"progressToken": "p:i9", "progress": 1}
    )
    back = fence.incoming(progress)
    assert isinstance(back, types.JSONRPCNotification) and back.params == {"progressToken": 9, "progress": 1}
    foreign = progress.model_copy(update={"params": {"progressToken": 9, "progress": 1}})
    assert fence.incoming(foreign) is None
    cancel = types.JSONRPCNotification(
        jsonrpc="2.0", method="notifications/cancelled", params={"requestId": 9, "reason": "caller cancelled"}
    )
    sent = fence.outgoing(cancel)
    assert isinstance(sent, types.JSONRPCNotification) and sent.params == {
        "requestId": "p:i9",
        "reason": "caller cancelled",
    }


def test_the_servers_own_requests_and_our_answers_pass_untouched() -> None:
    fence = RequestIdFence("x")
    server_request = types.JSONRPCRequest(jsonrpc="2.0", id=1, method="roots/list")
    assert fence.incoming(server_request) is server_request
    answer = types.JSONRPCResponse(jsonrpc="2.0", id=1, result={"roots": []})
    assert fence.outgoing(answer) is answer
    log = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"level": "info"})
    assert fence.incoming(log) is log and fence.outgoing(log) is log
