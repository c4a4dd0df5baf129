"""Where the gateway's daemon is: ``[box] endpoint = "stdio"`` spawns one as the gateway's child
(its data under the gateway's data dir unless ``[box] data_dir`` says otherwise), anything else
is a WebSocket endpoint reached with the token from ``[box] token_env``."""

from __future__ import annotations

from langbot_bridge.gateway.config import GatewayConfig, read_secret
from langbot_bridge.links import RemoteTarget, SpawnTarget


def box_target(config: GatewayConfig) -> SpawnTarget | RemoteTarget:
    box = config.box
    if box.endpoint == "stdio":
        data_dir = config.path(box.data_dir) if box.data_dir else config.data_dir / "box"
        args = ["--log-level", "warning", "--data-dir", str(data_dir)]
        if box.backend:
            args += ["--backend", box.backend]
        return SpawnTarget(args=tuple(args))
    return RemoteTarget(box.endpoint, read_secret(box.token_env, "[box] token_env", required=False))
