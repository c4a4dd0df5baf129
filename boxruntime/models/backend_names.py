"""The backend names, in one place: what this build implements, and what LangBot may name.

Kept free of imports: the CLI builds its ``--backend`` choices from it before loading anything.
A name LangBot knows but this build does not implement is accepted in LangBot's ``box`` config
(``box_init``, ``LANGBOT_BOX_CONFIG``) and refused when a sandbox is needed, with a clear
``BoxBackendUnavailableError``; the CLI does not offer it.
"""

from __future__ import annotations

# The backends of this build; gvisor and host only by name (never picked by ``local``).
IMPLEMENTED = ("docker", "gvisor", "nsjail", "host")
LOCAL = "local"  # Docker if an engine is reachable, else nsjail
CHOICES = (LOCAL, *IMPLEMENTED)  # what --backend and BOXRUNTIME_BACKEND offer
LANGBOT_NAMES = (LOCAL, "docker", "nsjail", "e2b", "host")  # what LangBot's box config may name
ACCEPTED = (*CHOICES, *(name for name in LANGBOT_NAMES if name not in CHOICES))  # ours and LangBot's
NOT_IMPLEMENTED = tuple(name for name in LANGBOT_NAMES if name not in CHOICES)
