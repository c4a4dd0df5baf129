"""WeChat customer service (微信客服; seed 000's WeChat KF binding, seed 001's ``wecomcs``
adapter notes): customers write from WeChat, the messages are fetched with ``kf/sync_msg``.

In: the encrypted callback only says that something is waiting (``Event`` =
``kf_msg_or_event`` with a short-lived ``Token`` and the ``OpenKfId``); it is answered
``success`` at once and wakes the channel's sync loop, which calls ``kf/sync_msg {cursor, token,
limit, open_kfid}`` page by page. Customer messages (``origin`` 3) are stored, deduplicated on
``msgid``; the page's ``next_cursor`` is kept in the gateway's store only after its messages
are, so a crash between the two fetches the page again (and the dedup recognises it), and a
restart continues from the kept cursor (plus a sync at start for each ``open_kfids`` account).
Servicer messages (origin 5) and system events (origin 4) are counted, not answered.

Out: ``kf/send_msg {touser, open_kfid, msgtype: "text", text}``. WeCom allows 5 messages per
customer within 48 h of the customer's last message: 95001 is a dead letter with that reason.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import anyio
import pydantic

from langbot_bridge.channels.longconn import LinkDropped
from langbot_bridge.channels.wecom_callback import ApiError, WeComCallbackChannel, WeComCallbackSettings
from langbot_bridge.gateway.channel import Capabilities, ChannelHost, ChannelKind, Delivery, Rejected
from langbot_bridge.gateway.messages import ChatRef, Inbound, SendResult

log = logging.getLogger(__name__)

CUSTOMER, SYSTEM, SERVICER = 3, 4, 5


class WeComKfSettings(WeComCallbackSettings):
    """``[[channel]] kind = "wecom_kf"``: the corp, the customer-service secret, callback token
    and key (by environment variable), the accounts to catch up on at start, paging."""

    kind: Literal["wecom_kf"] = "wecom_kf"
    open_kfids: list[str] = pydantic.Field(default_factory=list)  # synced at start
    sync_limit: int = pydantic.Field(default=1000, ge=1, le=1000)
    sync_retry_sec: float = pydantic.Field(default=5.0, gt=0)


class KfMessage(pydantic.BaseModel):
    """One entry of ``msg_list``."""

    model_config = pydantic.ConfigDict(extra="allow")

    msgid: str = pydantic.Field(min_length=1)
    open_kfid: str = ""
    external_userid: str = ""
    send_time: int = 0
    origin: int = CUSTOMER
    msgtype: str = "text"
    text: dict[str, Any] = pydantic.Field(default_factory=dict)


class WeComKfChannel(WeComCallbackChannel):
    """WeChat customer service as a webhook channel with a sync loop in ``run()``."""

    kind = "wecom_kf"
    settings: WeComKfSettings

    def __init__(self, settings: WeComKfSettings, host: ChannelHost) -> None:
        super().__init__(settings, host)
        self._tokens: dict[str, str] = {}  # open_kfid -> the latest callback token (valid 10 min)
        self._waiting: set[str] = set(settings.open_kfids)
        self._wake = anyio.Event()
        self.syncs = 0

    @property
    def capabilities(self) -> Capabilities:
        """Text only, up to ``max_text_chars``."""
        return Capabilities(max_text_chars=self.settings.max_text_chars, files=False)

    async def handle(self, fields: dict[str, str]) -> None:
        """A ``kf_msg_or_event`` callback: remember its token, wake the sync loop."""
        if fields.get("MsgType") != "event" or fields.get("Event") != "kf_msg_or_event":
            self.host.count(self.name, "ignored_callbacks")
            return
        kfid = fields.get("OpenKfId", "")
        if not kfid:
            raise Rejected("malformed", 400, "kf_msg_or_event without OpenKfId")
        if fields.get("Token"):
            self._tokens[kfid] = fields["Token"]
        self._waiting.add(kfid)
        self._wake.set()

    async def run(self) -> None:
        """Sync every account that has something waiting, page by page, until the gateway stops."""
        while True:
            while not self._waiting:
                await self._wake.wait()
                self._wake = anyio.Event()
            kfid = sorted(self._waiting)[0]
            self._waiting.discard(kfid)
            try:
                await self._sync(kfid)
            except (LinkDropped, ApiError) as exc:
                self.host.count(self.name, "sync_errors")
                log.warning("channel %s: kf/sync_msg for %s failed (%s); trying again", self.name, kfid, exc)
                self._waiting.add(kfid)
                await anyio.sleep(self.settings.sync_retry_sec)

    async def _sync(self, kfid: str) -> None:
        key = f"cursor:{kfid}"
        cursor = await self.host.load_state(self.name, key) or ""
        while True:
            body: dict[str, Any] = {"limit": self.settings.sync_limit, "open_kfid": kfid}
            if cursor:
                body["cursor"] = cursor
            if self._tokens.get(kfid):
                body["token"] = self._tokens[kfid]
            answer = await self.api.call("kf/sync_msg", body)
            self.syncs += 1
            for raw in answer.get("msg_list") or []:
                await self._message(raw, kfid)
            next_cursor = str(answer.get("next_cursor") or "")
            if next_cursor and next_cursor != cursor:
                cursor = next_cursor
                await self.host.save_state(self.name, key, cursor)  # after the page's messages
            if not answer.get("has_more"):
                return

    async def _message(self, raw: Any, kfid: str) -> None:
        try:
            message = KfMessage.model_validate(raw)
        except pydantic.ValidationError:
            self.host.count(self.name, "rejected_malformed")
            return
        if message.origin != CUSTOMER:
            self.host.count(self.name, "system_events" if message.origin == SYSTEM else "servicer_messages")
            return
        if not message.external_userid:
            self.host.count(self.name, "rejected_malformed")
            return
        text = str(message.text.get("content", "")) if message.msgtype == "text" else ""
        note = "" if message.msgtype == "text" else f"the customer sent a {message.msgtype}; it is not shown here"
        chat = ChatRef(
            channel=self.name,
            account=message.open_kfid or kfid,
            chat_type="person",
            chat_id=message.external_userid,
            user_id=message.external_userid,
        )
        inbound = Inbound(
            chat=chat,
            message_id=message.msgid,
            text=text,
            kind=message.msgtype,
            note=note,
            reply_to=message.msgid,
            received_at=time.time(),
        )
        try:
            await self.host.accept(inbound)
        except Rejected as error:  # overloaded: the cursor stays, the next sync fetches it again
            self.host.count(self.name, f"rejected_{error.reason}")
            raise LinkDropped(error.message) from None

    async def send(self, delivery: Delivery) -> SendResult:
        """``kf/send_msg`` to the customer from the account they wrote to."""
        chat = delivery.outbound.chat
        body = {
            "touser": chat.chat_id,
            "open_kfid": chat.account,
            "msgtype": "text",
            "text": {"content": delivery.outbound.text},
        }
        return await self.api.send("kf/send_msg", body)

    def diagnostics(self) -> dict[str, Any]:
        """The callback path, accounts waiting for a sync, syncs done, the API base."""
        return {
            "path": self.path,
            "waiting": sorted(self._waiting),
            "syncs": self.syncs,
            "api_base_url": self.api.base,
        }


KIND = ChannelKind("wecom_kf", WeComKfSettings, WeComKfChannel)
