"""Where a managed process's relay is: URL and credentials, from what the daemon and the link say.

- A daemon over stdio serves the relay on loopback with a token of its own: ``box_relay_info``
  gives both.
- A daemon over WebSocket serves it on the control endpoint (``base_url`` None) behind the
  control token: both come from the connector's ``RemoteTarget``.
- ``base_url`` overrides where to connect (a reverse proxy in front of the daemon); the token
  stays the one the relay itself requires.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

from boxruntime.errors import BoxValidationError
from boxruntime.models import RelayInfo
from langbot_bridge.links import WS_SCHEMES, RemoteTarget, bearer_headers


@dataclass(frozen=True, slots=True)
class RelayAddress:
    base_url: str  # scheme://host:port, http(s) or ws(s)
    token: str | None = field(default=None, repr=False)
    path_template: str = RelayInfo.model_fields["path_template"].default

    def url(self, session_id: str, process_id: str) -> str:
        """The relay URL of one managed process (ids quoted for the path)."""
        parts = urllib.parse.urlsplit(self.base_url.strip())
        scheme = WS_SCHEMES.get(parts.scheme.lower())
        if scheme is None or not parts.netloc:
            raise BoxValidationError(f"relay base URL {self.base_url!r} is not an http(s):// or ws(s):// URL")
        path = self.path_template.format(
            session_id=urllib.parse.quote(session_id, safe=""), process_id=urllib.parse.quote(process_id, safe="")
        )
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))

    def headers(self) -> dict[str, str]:
        """The upgrade headers: the relay's token, when it has one."""
        return bearer_headers(self.token)


def relay_address(info: RelayInfo, link: object, base_url: str | None = None) -> RelayAddress:
    """The relay for ``info`` (``box_relay_info``) reached through ``link`` (the service's link)."""
    target = getattr(link, "target", None)
    if info.base_url is not None:
        token = info.token
    elif isinstance(target, RemoteTarget):
        token = target.token
    else:
        token = None
    where = base_url or info.base_url
    if where is None and isinstance(target, RemoteTarget):
        control = urllib.parse.urlsplit(target.url)
        where = urllib.parse.urlunsplit((control.scheme, control.netloc, "", "", ""))
    if where is None:
        raise BoxValidationError(
            "the daemon serves the relay on its control endpoint, and this link does not say where that is; "
            "pass relay_base_url (e.g. 'http://host:5410')"
        )
    return RelayAddress(where, token, info.path_template)
