"""The platform channels' wire facts, without I/O: WeCom's callback encryption (both ways, and
every check that refuses a callback), the WeCom AI bot's media encryption, QQ's Ed25519 webhook
signatures and intents, the reconnect schedule, how a link's task group names its reason, and
the ACP relay's request-id fence."""

from __future__ import annotations

import base64
import json
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from langbot_bridge.channels import qq_wire, wecom_aibot_wire, wecom_crypt
from langbot_bridge.channels.longconn import LinkDropped, Reconnect, StopChannel, first_reason
from langbot_bridge.channels.qq import QQSettings
from langbot_bridge.gateway.agents.acp_relay import AcpRelay

AES_KEY = base64.b64encode(bytes(range(32))).decode().rstrip("=")


def test_wecom_callbacks_encrypt_and_decrypt_both_ways() -> None:
    key = wecom_crypt.aes_key(AES_KEY)
    inner = "<xml><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好 ]]> there]]></Content></xml>"
    cipher = wecom_crypt.encrypt(key, inner.encode(), "ww-corp")
    assert wecom_crypt.decrypt(key, cipher, "ww-corp").decode() == inner
    reply = wecom_crypt.encrypted_reply(key, "tok", "ww-corp", "<xml/>", "1700000000", "n1")
    fields = wecom_crypt.parse_xml(reply)
    assert fields["MsgSignature"] == wecom_crypt.signature("tok", "1700000000", "n1", fields["Encrypt"])
    assert wecom_crypt.decrypt(key, fields["Encrypt"], "ww-corp") == b"<xml/>"
    built = wecom_crypt.parse_xml(wecom_crypt.build_xml({"Content": "a]]>b"}))
    assert built == {"Content": "a]]>b"}  # CDATA's terminator survives


def test_wecom_callbacks_that_do_not_check_out_are_refused() -> None:
    key = wecom_crypt.aes_key(AES_KEY)
    cipher = wecom_crypt.encrypt(key, b"<xml/>", "ww-corp")
    sig = wecom_crypt.signature("tok", "1", "n", cipher)
    wecom_crypt.check_signature("tok", "1", "n", cipher, sig.upper())  # hex in either case
    with pytest.raises(wecom_crypt.CryptError, match="msg_signature"):
        wecom_crypt.check_signature("tok", "2", "n", cipher, sig)
    with pytest.raises(wecom_crypt.CryptError, match="receive id"):
        wecom_crypt.decrypt(key, cipher, "ww-other")
    other = wecom_crypt.aes_key(base64.b64encode(os.urandom(32)).decode().rstrip("="))
    with pytest.raises(wecom_crypt.CryptError):
        wecom_crypt.decrypt(other, cipher, "ww-corp")
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(wecom_crypt.CryptError):
            wecom_crypt.decrypt(key, bad, "ww-corp")
    with pytest.raises(wecom_crypt.CryptError, match="43 characters"):
        wecom_crypt.aes_key(AES_KEY[:-4])
    with pytest.raises(wecom_crypt.CryptError, match="not XML"):
        wecom_crypt.parse_xml(b"<xml><unclosed></xml>")


def test_wecom_aibot_media_decrypts_with_the_callbacks_aeskey() -> None:
    key = os.urandom(32)
    data = os.urandom(1000)
    encrypted = wecom_aibot_wire.encrypt_media(data, key)
    assert len(encrypted) % 32 == 0
    assert wecom_aibot_wire.decrypt_media(encrypted, base64.b64encode(key).decode().rstrip("=")) == data
    with pytest.raises(ValueError, match="padding"):
        wecom_aibot_wire.decrypt_media(encrypted, base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(ValueError, match="key or length"):
        wecom_aibot_wire.decrypt_media(encrypted[:-1], base64.b64encode(key).decode())


def test_qq_webhook_signatures_and_validation() -> None:
    key = qq_wire.signing_key("DG5g3B4j9X2KOErG")  # 16 bytes: repeated to 32 for the seed
    seed = b"DG5g3B4j9X2KOErGDG5g3B4j9X2KOErG"
    assert key.private_bytes_raw() == seed
    body = b'{"op":0,"d":{}}'
    signature = qq_wire.sign(key, b"1725442341" + body)
    assert qq_wire.verify(key, b"1725442341" + body, signature)
    assert not qq_wire.verify(key, b"1725442342" + body, signature)
    assert not qq_wire.verify(key, body, "zz")
    answer = qq_wire.validation_answer(key, {"plain_token": "Arq0D5A61EgUu4OxUvOp", "event_ts": "1725442341"})
    public: Ed25519PublicKey = key.public_key()
    public.verify(bytes.fromhex(answer["signature"]), b"1725442341Arq0D5A61EgUu4OxUvOp")
    with pytest.raises(ValueError, match="plain_token"):
        qq_wire.validation_answer(key, {"event_ts": "1"})


def test_qq_intents() -> None:
    assert qq_wire.intents_mask(["PUBLIC_MESSAGES"]) == 1 << 25
    assert qq_wire.intents_mask(["GUILDS", "DIRECT_MESSAGE"]) == 1 | 1 << 12
    with pytest.raises(ValueError, match="unknown intents"):
        QQSettings(name="q", app_id="1", secret_env="X", intents=["PUBLIC_MESAGES"])


def test_the_reconnect_schedule() -> None:
    policy = Reconnect(initial=1.0, maximum=60.0, first_jitter=0.25)
    assert policy.delay(0, lambda: 1.0) == 0.25  # the first attempt at once (up to the jitter)
    assert [policy.delay(n, lambda: 0.0) for n in (1, 2, 3, 7, 8)] == [1.0, 2.0, 4.0, 60.0, 60.0]
    assert policy.delay(2, lambda: 0.5) == 2.5  # DingTalk's 1 s * 2^n + U(0, 1)


def test_a_links_task_group_names_its_reason() -> None:
    stop = StopChannel("taken over")
    group = BaseExceptionGroup("link", [LinkDropped("x"), BaseExceptionGroup("inner", [stop])])
    assert first_reason(group) is stop
    dropped = LinkDropped("pings")
    assert first_reason(BaseExceptionGroup("link", [dropped])) is dropped


def test_the_acp_relay_keeps_only_its_own_answers() -> None:
    relay = AcpRelay("ws://127.0.0.1:1/relay", {})
    ours = {"jsonrpc": "2.0", "id": f"{relay.tag}:3", "result": {"ok": True}}
    assert relay._incoming(json.dumps(ours)) == {"jsonrpc": "2.0", "id": 3, "result": {"ok": True}}
    theirs = {"jsonrpc": "2.0", "id": 3, "result": {}}  # a replayed answer to an earlier client
    assert relay._incoming(json.dumps(theirs)) is None
    request = {"jsonrpc": "2.0", "id": 7, "method": "session/request_permission", "params": {}}
    assert relay._incoming(json.dumps(request)) == request  # the agent's own requests pass
    assert relay._incoming("not json") is None and relay.dropped_replies == 1
