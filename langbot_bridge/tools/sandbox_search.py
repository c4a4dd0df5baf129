"""glob and grep, run *inside* the sandbox by the glob/grep tools.

The tools send this file to ``python3 -`` through an exec, with the request as JSON in the
environment variable ``BOXTOOL_ARGS``; it prints exactly one JSON line. Stdlib only and
Python >= 3.8, because it runs on whatever interpreter the sandbox image has. Every walk and
read is bounded (entries scanned, files, bytes, matches, output size), and the exec's own
timeout bounds the rest (a pathological regex included).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

SKIP_DIRS = frozenset({".git", "node_modules", "__pycache__", ".venv", "venv", ".tox", "dist", "build"})
DEFAULT_ROOT = "/workspace"

GLOB_MAX_MATCHES = 100
MAX_SCAN_ENTRIES = 100_000
MAX_OUTPUT_BYTES = 50 * 1024

GREP_MAX_MATCHES = 200
GREP_MAX_FILES = 5000
GREP_MAX_LINE_CHARS = 500
GREP_MAX_SCANNED_LINE = 1024 * 1024
GREP_MAX_FILE_BYTES = 10 * 1024 * 1024
GREP_MAX_TOTAL_BYTES = 50 * 1024 * 1024
BINARY_SNIFF_BYTES = 8192


class Refused(Exception):
    """A request we will not run; the message is for the model."""


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A ``/``-separated glob as a regex: ``*`` and ``?`` stay within one path component,
    ``**`` spans any number of components (``a/**/b`` also matches ``a/b``)."""
    out = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _magic(part: str) -> bool:
    return any(ch in part for ch in "*?[")


def split_pattern(pattern: str, root: str) -> tuple[str, str]:
    """An absolute pattern becomes (its fixed leading directory, the rest)."""
    if not pattern.startswith("/"):
        return root, pattern
    parts = pattern.split("/")[1:]
    fixed = []
    while len(parts) > 1 and not _magic(parts[0]):
        fixed.append(parts.pop(0))
    return "/" + "/".join(fixed), "/".join(parts)


def walk(root: str, budget: dict[str, int]) -> Iterator[tuple[str, str]]:
    """(relative path, full path) of every non-directory under ``root``, sorted, not
    following symlinks, skipping SKIP_DIRS; stops when ``budget['entries']`` runs out."""
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        budget["entries"] -= len(dirnames)
        for name in sorted(filenames):
            budget["entries"] -= 1
            if budget["entries"] < 0:
                return
            full = os.path.join(directory, name)
            yield os.path.relpath(full, root), full
        if budget["entries"] < 0:
            return


def _fit(items: list[Any], limit: int) -> tuple[list[Any], bool]:
    """The longest prefix of ``items`` whose JSON stays within ``limit`` bytes."""
    total = 2
    for index, item in enumerate(items):
        total += len(json.dumps(item)) + 1
        if total > limit:
            return items[:index], True
    return items, False


def _root(args: dict[str, Any]) -> str:
    path = args.get("path") or DEFAULT_ROOT
    if not isinstance(path, str):
        raise Refused("path must be a string")
    return path if path.startswith("/") else os.path.join(DEFAULT_ROOT, path)


def run_glob(args: dict[str, Any]) -> dict[str, Any]:
    """Paths under ``root`` matching ``pattern``, newest first, within the walk's budget."""
    pattern = args.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise Refused("pattern must be a non-empty string")
    root, relative = split_pattern(pattern, _root(args))
    if not os.path.isdir(root):
        raise Refused(f"no such directory: {root}")
    regex = glob_regex(relative)
    budget = {"entries": MAX_SCAN_ENTRIES}
    found = []
    for rel, full in walk(root, budget):
        if regex.match(rel):
            try:
                found.append((os.lstat(full).st_mtime, full))
            except OSError:
                continue
    truncated_by: str | None = "scan" if budget["entries"] < 0 else None
    found.sort(key=lambda item: (-item[0], item[1]))  # newest first
    total = len(found)
    matches = [full for _, full in found[:GLOB_MAX_MATCHES]]
    if total > GLOB_MAX_MATCHES:
        truncated_by = truncated_by or "matches"
    matches, cut = _fit(matches, MAX_OUTPUT_BYTES)
    if cut:
        truncated_by = "bytes"
    return {
        "ok": True,
        "root": root,
        "matches": matches,
        "total": total,
        "truncated": truncated_by is not None,
        "truncated_by": truncated_by,
    }


def _targets(root: str, include: str | None, budget: dict[str, int]) -> Iterator[str]:
    if os.path.isfile(root):
        yield root
        return
    if not os.path.isdir(root):
        raise Refused(f"no such file or directory: {root}")
    # "*.py" filters on file names; a pattern with a "/" on paths relative to the root.
    regex = glob_regex(include) if include else None
    on_paths = include is not None and "/" in include
    for rel, full in walk(root, budget):
        if regex is None or regex.match(rel if on_paths else os.path.basename(rel)):
            yield full


def _search_file(full: str, regex: re.Pattern[str], matches: list[dict[str, Any]], limit: int) -> int:
    """Append the file's matching lines; returns the bytes read (0 if skipped)."""
    try:
        if os.path.islink(full) or os.path.getsize(full) > GREP_MAX_FILE_BYTES:
            return 0
        with open(full, "rb") as handle:
            data = handle.read(GREP_MAX_FILE_BYTES + 1)
    except OSError:
        return 0
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        return len(data)
    text = data.decode("utf-8", "replace")
    for number, line in enumerate(text.splitlines(), 1):
        if len(line) > GREP_MAX_SCANNED_LINE:
            continue
        if regex.search(line):
            matches.append({"file": full, "line": number, "content": line[:GREP_MAX_LINE_CHARS]})
            if len(matches) >= limit:
                break
    return len(data)


def run_grep(args: dict[str, Any]) -> dict[str, Any]:
    """Lines matching a regular expression in the files under ``root``, within the walk's budget."""
    pattern = args.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise Refused("pattern must be a non-empty string")
    try:
        regex = re.compile(pattern, re.IGNORECASE if args.get("ignore_case") else 0)
    except re.error as exc:
        raise Refused(f"invalid regular expression: {exc}") from None
    include = args.get("include") or None
    if include is not None and not isinstance(include, str):
        raise Refused("include must be a glob string")
    budget = {"entries": MAX_SCAN_ENTRIES}
    matches: list[dict[str, Any]] = []
    files = scanned = 0
    truncated_by: str | None = None
    for full in _targets(_root(args), include, budget):
        if files >= GREP_MAX_FILES:
            truncated_by = "files"
            break
        if scanned >= GREP_MAX_TOTAL_BYTES:
            truncated_by = "bytes_scanned"
            break
        files += 1
        scanned += _search_file(full, regex, matches, GREP_MAX_MATCHES + 1)
        if len(matches) > GREP_MAX_MATCHES:
            truncated_by = "matches"
            del matches[GREP_MAX_MATCHES:]
            break
    if truncated_by is None and budget["entries"] < 0:
        truncated_by = "scan"
    matches, cut = _fit(matches, MAX_OUTPUT_BYTES)
    if cut:
        truncated_by = "bytes"
    return {
        "ok": True,
        "matches": matches,
        "files_scanned": files,
        "truncated": truncated_by is not None,
        "truncated_by": truncated_by,
    }


OPERATIONS = {"glob": run_glob, "grep": run_grep}


def main() -> int:
    """Read the request (JSON) on stdin, print the answer (JSON); exit 0 either way."""
    try:
        args = json.loads(os.environ.get("BOXTOOL_ARGS", ""))
        if not isinstance(args, dict) or args.get("op") not in OPERATIONS:
            raise Refused("BOXTOOL_ARGS must be a JSON object with op glob or grep")
        result = OPERATIONS[args["op"]](args)
    except Refused as exc:
        result = {"ok": False, "error": str(exc)}
    except ValueError as exc:
        result = {"ok": False, "error": f"bad request: {exc}"}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
