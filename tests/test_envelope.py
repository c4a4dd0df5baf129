"""The action-RPC envelope (reference §A.2, §A.5) and the typed error round trip."""

from __future__ import annotations

import inspect
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boxruntime import errors
from boxruntime.errors import BoxError, BoxSessionNotFoundError, BoxValidationError, error_from_message
from boxruntime.protocol.envelope import (
    ERROR_TRUNCATION_MARKER,
    MAX_ERROR_CHARS,
    BadRequest,
    Request,
    Response,
    classify,
    encode,
    error_message,
    failure,
    request,
    success,
)

# ── classify ──────────────────────────────────────────────────────────────


def test_request_is_classified() -> None:
    msg = classify({"seq_id": 43, "action": "box_exec", "data": {"cmd": "ls"}, "context": {"x": 1}})
    assert msg == Request(seq_id=43, action="box_exec", data={"cmd": "ls"}, context={"x": 1})


def test_a_request_without_context_has_none_and_a_non_object_context_is_refused() -> None:
    assert classify({"seq_id": 1, "action": "a", "data": {}}) == Request(1, "a", {}, None)
    bad = classify({"seq_id": 2, "action": "a", "data": {}, "context": "inst"})
    assert isinstance(bad, BadRequest) and "context" in bad.reason


def test_request_without_seq_id_uses_minus_one() -> None:
    assert classify({"action": "__ping", "data": {}}) == Request(-1, "__ping", {})


@pytest.mark.parametrize("seq_id", [True, False, "7", 7.0, None, [7], {"n": 7}])
def test_non_integer_seq_id_becomes_minus_one(seq_id: object) -> None:
    assert classify({"seq_id": seq_id, "action": "__ping", "data": {}}) == Request(-1, "__ping", {})
    response = classify({"seq_id": seq_id, "code": 0, "message": "success", "data": {}})
    assert isinstance(response, Response)
    assert response.seq_id == -1


@pytest.mark.parametrize("seq_id", [0, -5, 2**40])
def test_integer_seq_ids_are_kept(seq_id: int) -> None:
    assert classify({"seq_id": seq_id, "action": "a", "data": {}}) == Request(seq_id, "a", {})


def test_request_without_data_is_a_bad_request_we_can_answer() -> None:
    msg = classify({"seq_id": 5, "action": "box_exec"})
    assert isinstance(msg, BadRequest)
    assert (msg.seq_id, msg.action) == (5, "box_exec")
    assert "data" in msg.reason


@pytest.mark.parametrize("data", [None, [], [1], "x", 3, True])
def test_request_data_not_an_object_is_a_bad_request(data: object) -> None:
    msg = classify({"seq_id": 6, "action": "box_exec", "data": data})
    assert isinstance(msg, BadRequest)
    assert msg.seq_id == 6
    assert "data" in msg.reason


@pytest.mark.parametrize("action", [None, 1, ["box_exec"], {"a": 1}, ""])
def test_action_not_a_non_empty_string_is_a_bad_request(action: object) -> None:
    msg = classify({"seq_id": 8, "action": action, "data": {}})
    assert isinstance(msg, BadRequest)
    assert msg.seq_id == 8
    assert "action" in msg.reason


def test_response_is_classified_with_defaults() -> None:
    full = {"seq_id": 1, "code": 0, "message": "success", "data": {"a": 1}, "chunk_status": "end"}
    assert classify(full) == Response(1, 0, "success", {"a": 1}, "end")
    # chunk_status missing means "continue"; a non-object data becomes {}.
    assert classify({"seq_id": 2, "code": 1, "message": "BoxError: x", "data": None}) == Response(
        2, 1, "BoxError: x", {}, "continue"
    )
    assert classify({"seq_id": 3, "code": 0}) == Response(3, 0, "", {}, "continue")
    assert classify({"seq_id": 4, "code": 0, "data": {}, "chunk_status": "weird"}) == Response(4, 0, "", {}, "continue")


@pytest.mark.parametrize("code", [True, "0", None, 0.0])
def test_response_with_non_integer_code_is_ignored(code: object) -> None:
    assert classify({"seq_id": 1, "code": code, "message": "success", "data": {}}) is None


@pytest.mark.parametrize("obj", [{}, {"seq_id": 1}, {"type": "event"}, {"message": "hi", "data": {}}])
def test_neither_request_nor_response_is_ignored(obj: dict) -> None:
    assert classify(obj) is None


@given(
    st.dictionaries(
        st.sampled_from(["seq_id", "action", "data", "code", "message", "chunk_status", "context"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(max_size=5)
        | st.lists(st.integers(), max_size=2)
        | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )
)
@settings(max_examples=200, deadline=None)
def test_classify_never_raises(obj: dict) -> None:
    msg = classify(obj)
    if "action" in obj:
        assert isinstance(msg, Request | BadRequest)
    elif "code" in obj:
        assert msg is None or isinstance(msg, Response)
    else:
        assert msg is None


# ── encoding and shapes ───────────────────────────────────────────────────


def test_encode_is_json_dumps_defaults_and_ascii() -> None:
    obj = {"seq_id": 1, "action": "box_exec", "data": {"cmd": "echo héllo 😀", "n": [1, 2]}}
    text = encode(obj)
    assert text == json.dumps(obj)
    assert text.isascii()
    assert '"seq_id": 1, "action": "box_exec"' in text
    assert "\\u00e9" in text
    assert "\\ud83d\\ude00" in text
    assert json.loads(text) == obj


def test_captured_ping_exchange_is_byte_exact() -> None:
    # Reference §A.2 captured exchange.
    assert encode(request(1, "__ping", {})) == '{"seq_id": 1, "action": "__ping", "data": {}}'
    assert encode(success(1, {})) == (
        '{"seq_id": 1, "code": 0, "message": "success", "data": {}, "chunk_status": "continue"}'
    )


def test_success_and_failure_shapes() -> None:
    assert success(7, {"a": 1}) == {
        "seq_id": 7,
        "code": 0,
        "message": "success",
        "data": {"a": 1},
        "chunk_status": "continue",
    }
    assert success(7, {}, "end")["chunk_status"] == "end"
    assert failure(8, "BoxError: boom") == {
        "seq_id": 8,
        "code": 1,
        "message": "BoxError: boom",
        "data": {},
        "chunk_status": "continue",
    }


def test_shapes_round_trip_through_classify() -> None:
    assert classify(json.loads(encode(success(3, {"x": [1]})))) == Response(3, 0, "success", {"x": [1]}, "continue")
    assert classify(json.loads(encode(success(3, {}, "end")))) == Response(3, 0, "success", {}, "end")
    assert classify(json.loads(encode(failure(4, "BoxError: no")))) == Response(4, 1, "BoxError: no", {}, "continue")
    assert classify(json.loads(encode(request(5, "a", {"b": 2})))) == Request(5, "a", {"b": 2})


# ── error text ────────────────────────────────────────────────────────────


def test_error_message_is_class_name_and_text() -> None:
    assert (
        error_message(BoxSessionNotFoundError("session s1 not found"))
        == "BoxSessionNotFoundError: session s1 not found"
    )
    assert error_message(ValueError("Action box_nope not found")) == "ValueError: Action box_nope not found"
    assert error_message(KeyError("session_id")) == "KeyError: 'session_id'"


def test_error_message_does_not_double_the_prefix_of_a_rebuilt_error() -> None:
    rebuilt = error_from_message("BoxValidationError: cmd must not be empty")
    assert error_message(rebuilt) == "BoxValidationError: cmd must not be empty"


def test_error_message_is_truncated_at_4096_characters() -> None:
    text = "é" * (MAX_ERROR_CHARS + 500)
    message = error_message(BoxValidationError(text))
    assert message == "BoxValidationError: " + "é" * MAX_ERROR_CHARS + ERROR_TRUNCATION_MARKER
    assert ERROR_TRUNCATION_MARKER == "... [protocol error truncated]"
    exact = error_message(RuntimeError("x" * MAX_ERROR_CHARS))
    assert exact == "RuntimeError: " + "x" * MAX_ERROR_CHARS
    assert not exact.endswith(ERROR_TRUNCATION_MARKER)


def _box_error_classes() -> list[type[BoxError]]:
    return sorted(
        (
            cls
            for _, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, BoxError) and cls.__module__ == errors.__name__
        ),
        key=lambda cls: cls.__name__,
    )


def test_error_classes_are_discovered() -> None:
    names = {cls.__name__ for cls in _box_error_classes()}
    assert {"BoxError", "BoxValidationError", "BoxSessionNotFoundError", "ConnectionClosedError"} <= names
    assert len(names) >= 18


@pytest.mark.parametrize("cls", _box_error_classes(), ids=lambda cls: cls.__name__)
def test_every_box_error_round_trips_to_the_same_type(cls: type[BoxError]) -> None:
    original = cls("something went wrong: details")
    rebuilt = error_from_message(error_message(original))
    assert type(rebuilt) is cls
    assert error_message(rebuilt) == error_message(original)
    assert "something went wrong: details" in str(rebuilt)


def test_unknown_error_names_become_action_call_error() -> None:
    for message in ["ValueError: Action box_nope not found", "KeyError: 'session_id'", "x"]:
        rebuilt = error_from_message(message)
        assert type(rebuilt) is errors.ActionCallError
        assert str(rebuilt) == message


def test_langbot_07s_permission_error_is_typed_and_keeps_its_wire_name() -> None:
    rebuilt = error_from_message("PermissionError: Stale Box placement generation")
    assert type(rebuilt) is errors.BoxPermissionError
    assert error_message(errors.BoxPermissionError("Stale Box placement generation")) == (
        "PermissionError: Stale Box placement generation"
    )


def test_only_a_leading_class_name_counts() -> None:
    rebuilt = error_from_message("BoxError: docker failed: BoxSessionNotFoundError: nope")
    assert type(rebuilt) is BoxError
    assert type(error_from_message("KeyError: BoxValidationError: x")) is errors.ActionCallError
