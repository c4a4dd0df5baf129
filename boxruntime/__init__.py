"""boxruntime: a self-hosted sandbox runtime for AI agents, speaking LangBot's action RPC."""

__version__ = "0.1.0"
