"""Vigil's NAB scorer against the reference scorer ``tests/shared/tools/nabscore.py`` (equal within 0.1).

``tests/shared`` is a byte-identical copy of the project's ``shared/`` NAB material
(``tests/shared/README.md``).
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import nab

ROOT = Path(__file__).resolve().parents[2]


def shared() -> Path:
    """The NAB subset and the reference scorer, in the repository."""
    return ROOT / "tests" / "shared"


def reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nabscore", shared() / "tools" / "nabscore.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NABSCORE = reference()


def corpus(rng: random.Random, files: int) -> list[tuple[list[float], list[tuple[int, int]]]]:
    """Random files: a length, windows that do not overlap (some inside probation), scores with ties."""
    out = []
    for _ in range(files):
        n = rng.randint(20, 400)
        windows: list[tuple[int, int]] = []
        i = rng.randint(0, n // 3)
        while len(windows) < rng.randint(0, 3) and i < n - 2:
            width = rng.randint(1, max(1, n // 8))
            end = min(n - 1, i + width - 1)
            windows.append((i, end))
            i = end + 1 + rng.randint(1, n // 4)
        scores = [round(rng.random(), 2) if rng.random() < 0.3 else 0.0 for _ in range(n)]
        out.append((scores, windows))
    return out


def both(files: list[tuple[list[float], list[tuple[int, int]]]], profile: str, threshold: float | None):
    mine, theirs = [], []
    next_id = 0
    for i, (scores, windows) in enumerate(files):
        mine.append(nab.scored_file(scores, windows, next_id))
        theirs.append(NABSCORE.prepare_file(f"f{i}", scores, windows, next_id))
        next_id += len(windows)
    ours, _ = nab.score(mine, profile, threshold)
    reference = NABSCORE.score_corpus(theirs, next_id, profile, threshold)["normalized"]
    return ours, reference


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), files=st.integers(1, 6), profile=st.sampled_from(list(nab.PROFILES)))
def test_equal_to_the_reference_scorer_on_random_corpora(seed: int, files: int, profile: str) -> None:
    data = corpus(random.Random(seed), files)
    if not any(windows for _, windows in data):
        data.append(([0.0] * 50 + [0.9] + [0.0] * 49, [(60, 70)]))
    for threshold in (None, 0.5):
        ours, reference = both(data, profile, threshold)
        assert ours == pytest.approx(reference, abs=0.1)


def test_probation_and_sigma_follow_nab() -> None:
    assert nab.probation(1000) == 150
    assert nab.probation(22695) == 750
    assert nab.sigma(-1.0) == pytest.approx(NABSCORE.curve(-1.0))
    assert nab.sigma(4.0) == -1.0


def test_a_perfect_detector_scores_100_and_a_silent_one_0() -> None:
    windows = [(300, 340), (600, 650)]
    perfect = [1.0 if i in (300, 600) else 0.0 for i in range(1000)]
    silent = [0.0] * 1000
    for profile in nab.PROFILES:
        assert nab.score([nab.scored_file(perfect, windows, 0)], profile)[0] == pytest.approx(100.0)
        assert nab.score([nab.scored_file(silent, windows, 0)], profile, 0.5)[0] == pytest.approx(0.0)
