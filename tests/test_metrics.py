"""The metrics module on its own: one registry per runtime, and label values from closed sets.
``integration_tests/test_metrics.py`` checks a real daemon's scrape against what it did."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from boxruntime.config import Settings
from boxruntime.errors import BoxValidationError
from boxruntime.runtime.core import BoxRuntime


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_each_runtime_keeps_its_own_registry(tmp_path: Path) -> None:
    first = BoxRuntime(Settings(data_dir=tmp_path / "a"))
    second = BoxRuntime(Settings(data_dir=tmp_path / "b"))
    first.metrics.session_created("nsjail", pooled=True)
    first.metrics.readoptions.labels("nsjail").inc()
    hit = ("boxruntime_session_creations_total", frozenset({("backend", "nsjail"), ("pool", "hit")}))
    assert samples(first.metrics.scrape().decode())[hit] == 1
    assert hit not in samples(second.metrics.scrape().decode())
    readopted = ("boxruntime_readoptions_total", frozenset({("backend", "nsjail")}))
    assert samples(first.metrics.scrape().decode())[readopted] == 1


def test_a_callers_text_never_becomes_a_label_value(tmp_path: Path) -> None:
    runtime = BoxRuntime(Settings(data_dir=tmp_path))
    for name in ("made-up action", "box_exec\nfake_metric 1", "x" * 1000):
        runtime.metrics.rpc_failed(name, BoxValidationError("refused"))
    runtime.metrics.rpc_failed("box_exec", BoxValidationError("refused"))
    errors = {
        dict(labels)["action"]: count
        for (name, labels), count in samples(runtime.metrics.scrape().decode()).items()
        if name == "boxruntime_rpc_errors_total"
    }
    assert errors == {"(unknown)": 3, "box_exec": 1}
