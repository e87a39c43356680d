"""bench/detectors.py runs over every detector and prints its figures and ratios."""

from __future__ import annotations

import pytest

from bench import detectors as bench


def test_the_bench_finds_every_detector_a_rule_can_name() -> None:
    assert {"zscore", "seasonal"} <= set(bench.detectors())


def test_one_small_run_prints_every_figure_and_the_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--runs", "1", "--series", "5", "--samples", "60", "--models", "20", "--only", "zscore"])
    out = capsys.readouterr().out
    for label in ("detector", "stage likelihood", "guard", "checkpoint per 10,000", "restore per 10,000"):
        assert f"  {label} " in out
    assert "ratio worker / bare" in out
    assert "bytes/series checkpoint" in out
