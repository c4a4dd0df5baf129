"""SKILL.md: an optional YAML frontmatter block, then the instructions (reference §D.14).

The block starts at a first line of ``---`` and ends at the next ``---`` line; without that end
there is no frontmatter. YAML that is not a mapping counts as ``{}``. YAML that does not parse is
an error (LangBot 0.5 raised too, and skipped the package when listing).

Writing emits ``name``, ``display_name`` and ``description`` first (empty ones left out, as
LangBot does) and then every other key the file already had, so metadata such as ``license`` or
``allowed-tools`` survives an edit (LangBot 0.5 dropped it; 0.7 keeps it).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from boxruntime.errors import BoxValidationError

KNOWN_FIELDS = ("name", "display_name", "description")
FENCE = "---"
# A frontmatter block is metadata; these bound what a hostile one costs to load and to report.
MAX_FRONTMATTER_CHARS = 64 * 1024
MAX_FRONTMATTER_NODES = 10_000


def split(content: str) -> tuple[str | None, str]:
    """The frontmatter text (None without a complete block) and the instructions."""
    if not content.startswith(FENCE):
        return None, content
    lines = content.splitlines(keepends=True)
    if lines[0].strip() != FENCE:
        return None, content
    for index in range(1, len(lines)):
        if lines[index].strip() == FENCE:
            return "".join(lines[1:index]), "".join(lines[index + 1 :]).lstrip("\n")
    return None, content


def parse(content: str) -> tuple[dict[Any, Any], str]:
    """The frontmatter mapping, exactly as YAML loaded it, and the instructions."""
    block, instructions = split(content)
    if block is None:
        return {}, content
    if len(block) > MAX_FRONTMATTER_CHARS:
        raise BoxValidationError(f"SKILL.md frontmatter is larger than {MAX_FRONTMATTER_CHARS} characters")
    import yaml  # here, not at the top: a daemon that never reads a skill never loads it (1.7 MiB)

    try:
        metadata = yaml.safe_load(block)
    except (yaml.YAMLError, RecursionError) as exc:
        raise BoxValidationError(f"SKILL.md frontmatter is not valid YAML: {exc}") from None
    if not isinstance(metadata, dict):
        metadata = {}
    # YAML anchors let a small block stand for an exponentially large value; walking it once
    # under a node budget rejects that here, before anything str()s or serialises it.
    _json_safe(metadata, [MAX_FRONTMATTER_NODES])
    return metadata, instructions


def build(metadata: dict[Any, Any], instructions: str) -> str:
    """SKILL.md text: the known fields in LangBot's order, then the other keys as they were."""
    block: dict[Any, Any] = {}
    for key in KNOWN_FIELDS:
        value = metadata.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        block[key] = value
    block.update((key, value) for key, value in metadata.items() if key not in KNOWN_FIELDS)
    if not block:
        return instructions
    import yaml

    text = yaml.safe_dump(block, default_flow_style=False, allow_unicode=True, sort_keys=False).strip()
    return f"{FENCE}\n{text}\n{FENCE}\n\n{instructions}"


def extra_fields(metadata: dict[Any, Any]) -> dict[str, Any]:
    """The keys other than the known three, as JSON-safe values (for ``Skill.frontmatter``)."""
    budget = [MAX_FRONTMATTER_NODES]
    return {str(k): _json_safe(v, budget) for k, v in metadata.items() if k not in KNOWN_FIELDS}


def _json_safe(value: Any, budget: list[int]) -> Any:
    # Counting every node visited bounds the walk whatever the shape (shared or cyclic nodes).
    budget[0] -= 1
    if budget[0] < 0:
        raise BoxValidationError(f"SKILL.md frontmatter has more than {MAX_FRONTMATTER_NODES} values")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v, budget) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_json_safe(v, budget) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return str(value)
