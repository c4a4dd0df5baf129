"""Statistics and the table bench_exec.py prints."""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field

# Lower is better for every unit; the words say which way the ratio goes.
RATIO_WORDS = {"ms": ("faster", "slower"), "MiB": ("smaller", "larger")}


@dataclass
class Row:
    key: str  # JSON key
    label: str
    unit: str  # "ms" or "MiB"
    ours: float | None
    theirs: float | None

    @property
    def ratio(self) -> float | None:
        return self.theirs / self.ours if self.ours and self.theirs else None


@dataclass
class Footnotes:
    """Markers [a], [b], ... handed out in table order, with their texts."""

    lines: list[str] = field(default_factory=list)

    def add(self, text: str) -> str:
        marker = f"[{chr(ord('a') + len(self.lines))}]"
        self.lines.append(f"{marker} {text}")
        return marker


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def pct_row(key: str, label: str, samples: dict[str, list[float]], q: float) -> Row:
    """A time row: the q-th percentile of each side's samples (keys "ours" and "theirs")."""
    return Row(key, label, "ms", pct(samples["ours"], q), pct(samples["theirs"], q))


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def ratio_text(row: Row) -> str:
    r = row.ratio
    if r is None:
        return "n/a"
    better, worse = RATIO_WORDS.get(row.unit, ("better", "worse"))
    return f"{r:.1f}x {better}" if r >= 1 else f"{1 / r:.1f}x {worse}"


def value_text(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ms" and value < 10:
        return f"{value:.2f} ms"  # sub-millisecond figures (the relay) need the extra digit
    return f"{value:.1f} {unit}"


def render_table(rows: list[Row]) -> str:
    header = ("metric", "ours", "theirs", "ratio (theirs/ours)")
    body = [
        (row.label, value_text(row.ours, row.unit), value_text(row.theirs, row.unit), ratio_text(row)) for row in rows
    ]
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(4)]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"

    def fmt(r: tuple[str, ...]) -> str:
        return "| " + " | ".join(r[c].ljust(widths[c]) if c == 0 else r[c].rjust(widths[c]) for c in range(4)) + " |"

    return "\n".join([line, fmt(header), line, *(fmt(r) for r in body), line])


def write_medians(args: argparse.Namespace, samples: dict[str, dict[str, list[float]]]) -> None:
    """``--json``: the run's arguments, each kind's median per metric, and every sample."""
    summary = {k: {kind: statistics.median(v) for kind, v in samples[k].items()} for k in samples}
    args.json.write_text(
        json.dumps({"args": vars(args) | {"json": str(args.json)}, "p50": summary, "samples": samples})
    )
