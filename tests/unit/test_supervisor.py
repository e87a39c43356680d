from __future__ import annotations

import doctest

from vigil import supervisor
from vigil.supervisor import BACKOFF_MAX_S, STABLE_AFTER_S, Part


def test_doctests() -> None:
    result = doctest.testmod(supervisor)
    assert result.attempted > 0
    assert result.failed == 0


def test_backoff_doubles_up_to_the_cap_and_resets_after_a_stable_run() -> None:
    part = Part("worker")
    delays = []
    now = 0.0
    for _ in range(8):
        part.started = now
        now += 1.0  # crashes a second after each start
        delays.append(part.died(now))
        assert part.due == now + delays[-1]
        assert part.process is None
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, BACKOFF_MAX_S, BACKOFF_MAX_S, BACKOFF_MAX_S]
    part.started = now
    assert part.died(now + STABLE_AFTER_S) == 1.0
