"""The backend names, in one place: what this build implements, and what LangBot may name.

Kept free of imports: the CLI builds its ``--backend`` choices from it before loading anything.
A name LangBot knows but this build does not implement is accepted in LangBot's ``box`` config
(``box_init``, ``LANGBOT_BOX_CONFIG``) and refused when a sandbox is needed, with a clear
``BoxBackendUnavailableError``; the CLI does not offer it.
"""

from __future__ import annotations

# The backends of this build; gvisor, host and e2b only by name (never picked by ``local``;
# e2b: sandboxes on an E2B server).
IMPLEMENTED = ("docker", "gvisor", "nsjail", "host", "e2b")
LOCAL = "local"  # Docker if an engine is reachable, else nsjail
# Backends whose sandboxes live on another server: never a candidate of ``local``, and a daemon
# told to serve one refuses to start when that server cannot be reached.
REMOTE = ("e2b",)
CHOICES = (LOCAL, *IMPLEMENTED)  # what --backend and BOXRUNTIME_BACKEND offer
LANGBOT_NAMES = (LOCAL, "docker", "nsjail", "e2b", "host")  # what LangBot's box config may name
ACCEPTED = (*CHOICES, *(name for name in LANGBOT_NAMES if name not in CHOICES))  # ours and LangBot's
NOT_IMPLEMENTED = tuple(name for name in LANGBOT_NAMES if name not in CHOICES)
