"""bench/detectors.py runs over every detector and prints its figures and ratios."""

from __future__ import annotations

import pytest

from bench import detectors as bench


def test_the_bench_finds_every_detector_a_rule_can_name() -> None:
    assert {"zscore", "seasonal", "forecast", "hst", "contextual", "ensemble"} <= set(bench.detectors())


def test_one_small_run_prints_every_figure_and_the_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--runs", "1", "--series", "5", "--samples", "60", "--models", "20", "--only", "zscore"])
    out = capsys.readouterr().out
    for label in ("detector", "stage likelihood", "guard", "checkpoint per 10,000", "restore per 10,000"):
        assert f"  {label} " in out
    assert "ratio worker / bare" in out
    assert "bytes/series checkpoint" in out


def test_the_long_figure_compares_the_checkpoint_with_the_one_after_10_4_samples(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--runs", "1", "--series", "3", "--samples", "40", "--models", "5", "--only", "contextual"]
    bench.main([*args, "--long", "--long-samples", "20000"])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "after 20,000 samples" in x)
    ratio = float(line.split("samples: ")[1].split("x")[0])
    assert 0.5 < ratio < 1.5, line  # bounded: no larger after twice the samples
