"""Signatures as the platforms make them: LangBot's HTTP bot (``sha256=`` HMAC over
``"<ts>." + body``, 300 s window, named failure reasons) and WorkBot's hex HMAC of the body."""

from __future__ import annotations

import hashlib
import hmac
import time

from langbot_bridge.channels.http_bot import sign, verify
from langbot_bridge.channels.webhook import hmac_sha256_hex, same


def test_http_bot_signatures() -> None:
    body = b'{"session_id":"s","message":[]}'
    now = int(time.time())
    good = "sha256=" + hmac.new(b"k", f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert sign("k", body, now) == good
    assert verify("k", body, str(now), good, 300) is None
    assert verify("k", body, None, good, 300) == "missing_headers"
    assert verify("k", body, str(now), None, 300) == "missing_headers"
    assert verify("k", body, "12:00", good, 300) == "bad_timestamp"
    assert verify("k", body, str(now - 301), sign("k", body, now - 301), 300) == "expired"
    assert verify("k", body, str(now + 301), sign("k", body, now + 301), 300) == "expired"
    assert verify("k", body + b" ", str(now), good, 300) == "signature_mismatch"
    assert verify("other", body, str(now), good, 300) == "signature_mismatch"


def test_workbot_signature_is_the_hex_hmac_of_the_raw_body() -> None:
    body = '{"robotId":"r","spoken":"你好"}'.encode()
    assert hmac_sha256_hex("secret", body) == hmac.new(b"secret", body, hashlib.sha256).hexdigest()
    assert same("abc", "abc") and not same("abc", "abd") and not same("abc", "ab")
