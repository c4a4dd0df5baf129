"""LangBot 4.11.2 (langbot-plugin 0.7.16) against boxruntime, run in .venv-langbot4 by ./dev test."""
