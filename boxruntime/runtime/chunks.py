"""Streamed output as the wire carries it: text where the bytes allow, base64 where not."""

from __future__ import annotations

import base64
import codecs
from typing import Literal


class ChunkText:
    """UTF-8 text where the bytes allow it (characters split across chunks are held back),
    base64 for whatever is not text."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")

    def convert(self, data: bytes) -> tuple[str, Literal["utf-8", "base64"]]:
        try:
            return self._decoder.decode(data), "utf-8"
        except UnicodeDecodeError:
            pending, _ = self._decoder.getstate()
            self._decoder.reset()
            return base64.b64encode(pending + data).decode("ascii"), "base64"
