"""The in-sandbox glob/grep script, run exactly as the tools send it (``sh -c`` with the
heredoc and the request in ``BOXTOOL_ARGS``), here against real temporary directories."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from langbot_bridge.tools.search import ARGS_ENV, COMMAND


def run(op: str, **args: Any) -> dict[str, Any]:
    env = {"PATH": os.environ["PATH"], ARGS_ENV: json.dumps({"op": op, **args})}
    done = subprocess.run(["sh", "-c", COMMAND], env=env, capture_output=True, text=True, timeout=60, check=True)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    reply: dict[str, Any] = json.loads(lines[0])
    return reply


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    files = {
        "top.py": "import os\nprint('Hello')\n",
        "notes.txt": "hello world\nnothing here\n",
        "a.txt": "",
        "b.txt": "",
        "src/main.py": "def main():\n    return 'hello'\n",
        "src/pkg/util.py": "HELLO = 1\n",
        "src/pkg/data.json": '{"hello": true}\n',
        "node_modules/dep/index.py": "hello\n",
        ".git/config.py": "hello\n",
    }
    for name, body in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    (tmp_path / "blob.bin").write_bytes(b"hello\0\x01\x02")
    return tmp_path


def names(root: Path, paths: list[str]) -> list[str]:
    return [os.path.relpath(p, root) for p in paths]


def test_glob_star_star_spans_directories_and_skips_vendor_dirs(tree: Path) -> None:
    reply = run("glob", pattern="**/*.py", path=str(tree))
    assert reply["ok"] and not reply["truncated"]
    assert sorted(names(tree, reply["matches"])) == ["src/main.py", "src/pkg/util.py", "top.py"]
    assert reply["total"] == 3


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.py", ["top.py"]),
        ("src/**/*.py", ["src/main.py", "src/pkg/util.py"]),
        ("src/*", ["src/main.py"]),
        ("?.txt", ["a.txt", "b.txt"]),
        ("[a].txt", ["a.txt"]),
        ("[!a].txt", ["b.txt"]),
        ("**/*.json", ["src/pkg/data.json"]),
        ("*.nothing", []),
    ],
)
def test_glob_patterns(tree: Path, pattern: str, expected: list[str]) -> None:
    reply = run("glob", pattern=pattern, path=str(tree))
    assert sorted(names(tree, reply["matches"])) == expected


def test_glob_absolute_pattern_and_relative_path(tree: Path) -> None:
    reply = run("glob", pattern=f"{tree}/src/**/*.py")
    assert sorted(names(tree, reply["matches"])) == ["src/main.py", "src/pkg/util.py"]
    assert reply["root"] == f"{tree}/src"


def test_glob_returns_newest_first(tree: Path) -> None:
    for age, name in enumerate(["src/pkg/util.py", "top.py", "src/main.py"]):
        os.utime(tree / name, (1_000_000 - age * 1000, 1_000_000 - age * 1000))
    reply = run("glob", pattern="**/*.py", path=str(tree))
    assert names(tree, reply["matches"]) == ["src/pkg/util.py", "top.py", "src/main.py"]


def test_glob_caps_matches(tmp_path: Path) -> None:
    for i in range(130):
        (tmp_path / f"f{i:03d}.log").write_text("")
    reply = run("glob", pattern="*.log", path=str(tmp_path))
    assert len(reply["matches"]) == 100 and reply["total"] == 130
    assert reply["truncated"] and reply["truncated_by"] == "matches"


def test_glob_missing_directory_is_an_error(tmp_path: Path) -> None:
    reply = run("glob", pattern="*", path=str(tmp_path / "nope"))
    assert reply == {"ok": False, "error": f"no such directory: {tmp_path / 'nope'}"}


def test_grep_across_files_with_line_numbers(tree: Path) -> None:
    reply = run("grep", pattern="hello", path=str(tree))
    found = {(os.path.relpath(m["file"], tree), m["line"], m["content"]) for m in reply["matches"]}
    assert found == {
        ("notes.txt", 1, "hello world"),
        ("src/main.py", 2, "    return 'hello'"),
        ("src/pkg/data.json", 1, '{"hello": true}'),
    }
    assert not reply["truncated"]  # blob.bin is binary; node_modules and .git are skipped


def test_grep_include_and_ignore_case(tree: Path) -> None:
    reply = run("grep", pattern="hello", path=str(tree), include="*.py", ignore_case=True)
    assert sorted(os.path.relpath(m["file"], tree) for m in reply["matches"]) == [
        "src/main.py",
        "src/pkg/util.py",
        "top.py",
    ]
    nested = run("grep", pattern="hello", path=str(tree), include="src/**/*.json")
    assert [os.path.relpath(m["file"], tree) for m in nested["matches"]] == ["src/pkg/data.json"]


def test_grep_a_single_file_and_regex_syntax(tree: Path) -> None:
    reply = run("grep", pattern=r"^\s+return\b", path=str(tree / "src" / "main.py"))
    assert [(m["line"], m["content"]) for m in reply["matches"]] == [(2, "    return 'hello'")]


def test_grep_bad_regex_and_missing_path_are_errors(tree: Path) -> None:
    bad = run("grep", pattern="(unclosed", path=str(tree))
    assert not bad["ok"] and bad["error"].startswith("invalid regular expression")
    missing = run("grep", pattern="x", path=str(tree / "nope"))
    assert missing == {"ok": False, "error": f"no such file or directory: {tree / 'nope'}"}


def test_grep_caps_matches_and_line_length(tmp_path: Path) -> None:
    (tmp_path / "many.txt").write_text("match\n" * 250)
    (tmp_path / "wide.txt").write_text("match" + "x" * 2000 + "\n")
    reply = run("grep", pattern="match", path=str(tmp_path))
    assert len(reply["matches"]) == 200
    assert reply["truncated"] and reply["truncated_by"] == "matches"
    wide = run("grep", pattern="match", path=str(tmp_path / "wide.txt"))
    assert len(wide["matches"][0]["content"]) == 500


def test_bad_requests_are_answered_not_crashed() -> None:
    env = {"PATH": os.environ["PATH"], ARGS_ENV: "not json"}
    done = subprocess.run(["sh", "-c", COMMAND], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout)["ok"] is False
    assert run("nope")["ok"] is False
    assert run("glob", pattern="")["error"] == "pattern must be a non-empty string"
