"""LangBot 4.11.2 (which pins langbot-plugin 0.7.16) against boxruntime, in LangBot's own venv.

``./dev test`` makes ``.venv-langbot4`` once (langbot4_tests/requirements.txt) and runs this
directory there after the main suite; alone: ``./dev test langbot4_tests`` or
``.venv-langbot4/bin/python -m pytest langbot4_tests``. boxruntime is not installed in that venv
(LangBot pins mcp 1.x, boxruntime needs 2.x): the daemon always runs as a process of the main
venv (daemon.py), from this checkout or from ``LB4_TESTS_DAEMON_SOURCE``.

- test_client07_*: langbot-plugin 0.7.16's own client, controllers and relay URL, over WebSocket
  and stdio, wired as LangBot's connector wires them (client07.py).
- test_langbot_*: LangBot's own BoxService, BoxRuntimeConnector, Runner Box API, MCP loader and
  Cloud admission, with a stand-in for its application object (langbot_app.py).
"""
