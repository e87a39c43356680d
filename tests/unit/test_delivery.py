"""Sends that never kill the agent (engine.delivery): retries with backoff, dead letters cut to fit."""

from __future__ import annotations

import asyncio
import base64

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.delivery import FLOOR, Backoff, Sender, fit
from engine.processor import Source, deadletter

SRC = Source("vigil.samples", 2, 17)
FAST = Backoff(initial_s=0.001, cap_s=0.004)


def test_backoff_doubles_up_to_its_cap() -> None:
    delays = Backoff(initial_s=0.1, cap_s=1.0).delays()
    assert [round(next(delays), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_failing_send_is_retried_until_it_succeeds_and_counted() -> None:
    attempts: list[int] = []

    async def send() -> None:
        attempts.append(1)
        if len(attempts) < 4:
            raise ConnectionError("broker cut")

    sender = Sender(attempt_timeout_s=1.0, backoff=FAST)
    asyncio.run(sender.deliver("a verdict", send))
    assert len(attempts) == 4
    assert sender.retries == 3


def test_a_send_that_hangs_is_abandoned_after_the_attempt_timeout_and_sent_again() -> None:
    attempts: list[int] = []

    async def send() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            await asyncio.Event().wait()  # never acknowledged

    sender = Sender(attempt_timeout_s=0.05, backoff=FAST)
    asyncio.run(asyncio.wait_for(sender.deliver("a verdict", send), 10))
    assert len(attempts) == 2
    assert sender.retries == 1


def test_cancellation_still_ends_a_retrying_send() -> None:
    async def send() -> None:
        raise ConnectionError("down for good")

    async def go() -> None:
        task = asyncio.create_task(Sender(attempt_timeout_s=1.0, backoff=FAST).deliver("x", send))
        while not task.done():
            await asyncio.sleep(0.01)
            if not task.done():
                task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())


def test_an_oversized_dead_letter_is_cut_to_the_limit_and_says_so() -> None:
    raw = bytes(range(256)) * 400  # 100 KiB record
    doc = deadletter("not JSON: unexpected byte", SRC, raw=raw)
    cut = fit(doc, 2000)
    assert len(cut) <= 2000
    parsed = orjson.loads(cut)
    assert parsed["reason"] == "not JSON: unexpected byte"
    assert parsed["source"] == {"topic": "vigil.samples", "partition": 2, "offset": 17}
    assert parsed["truncated"] == {"original_bytes": len(doc)}
    head = base64.b64decode(parsed["payload_base64"])
    assert len(head) > 1000
    assert raw.startswith(head)


def test_a_dead_letter_that_fits_is_left_alone() -> None:
    doc = deadletter("bad", SRC, payload={"points": [[1, 2.0]]})
    assert fit(doc, 10_000) == doc


@settings(max_examples=200, deadline=None)
@given(
    payload=st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    ),
    reason=st.text(max_size=3000),
    limit=st.integers(min_value=FLOOR, max_value=5000),
)
def test_cut_dead_letters_are_json_within_the_limit(payload: object, reason: str, limit: int) -> None:
    cut = fit(deadletter(reason, SRC, payload=payload), limit)
    assert len(cut) <= limit
    parsed = orjson.loads(cut)
    assert parsed["source"]["offset"] == 17


def test_a_dead_letter_the_broker_refuses_as_too_large_is_cut_further() -> None:
    sent: list[bytes] = []

    class TooBig(Exception):
        pass

    async def send(value: bytes) -> None:
        if len(value) > 1500:  # the broker's real limit is below what we were told
            raise TooBig
        sent.append(value)

    doc = deadletter("bad", SRC, raw=b"x" * 50_000)
    sender = Sender(attempt_timeout_s=1.0, backoff=FAST)
    asyncio.run(sender.deliver_deadletter(doc, 10_000, send, too_large=lambda e: isinstance(e, TooBig)))
    assert len(sent) == 1
    assert len(sent[0]) <= 1500
    assert orjson.loads(sent[0])["truncated"]
    assert sender.retries >= 1


def test_retries_wait_the_backoff_delays_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    waited: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        waited.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("engine.delivery.asyncio.sleep", sleep)
    attempts: list[int] = []

    async def send() -> None:
        attempts.append(1)
        if len(attempts) <= 6:
            raise TimeoutError

    sender = Sender(attempt_timeout_s=1.0, backoff=Backoff(initial_s=0.1, cap_s=1.0))
    asyncio.run(sender.deliver("a verdict", send))
    assert [round(d, 3) for d in waited] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert sender.retries == 6


def test_a_dead_letter_refused_even_at_the_floor_is_dropped_counted_and_the_sender_goes_on() -> None:
    tried: list[int] = []

    class TooBig(Exception):
        pass

    async def send(value: bytes) -> None:
        tried.append(len(value))
        raise TooBig

    doc = deadletter("bad", SRC, raw=b"x" * 50_000)
    sender = Sender(attempt_timeout_s=1.0, backoff=FAST)
    asyncio.run(
        asyncio.wait_for(
            sender.deliver_deadletter(doc, 10_000, send, too_large=lambda e: isinstance(e, TooBig)), 10
        )
    )
    assert sender.dropped == 1
    assert tried[0] <= 10_000
    assert tried[-1] <= FLOOR  # cut further each time, down to the floor, then given up
    assert tried == sorted(tried, reverse=True)
    assert sender.retries == len(tried)


def test_a_failure_that_is_not_a_size_refusal_is_retried_not_cut() -> None:
    sent: list[bytes] = []

    async def send(value: bytes) -> None:
        sent.append(value)
        if len(sent) < 3:
            raise ConnectionError("leader moved")

    doc = deadletter("bad", SRC, payload={"points": [[1, 2.0]]})
    sender = Sender(attempt_timeout_s=1.0, backoff=FAST)
    asyncio.run(sender.deliver_deadletter(doc, 10_000, send, too_large=lambda e: False))
    assert sent == [doc, doc, doc]
    assert (sender.retries, sender.dropped) == (2, 0)


def test_a_reason_of_escaped_and_wide_characters_is_cut_by_bytes_not_characters() -> None:
    # found by the property above: 100 characters of reason can be 600 bytes of JSON
    reason = "0" * 43 + "\x1f" * 13 + "\u0800" * 9
    for limit in range(FLOOR, FLOOR + 40):
        cut = fit(deadletter(reason, SRC, payload=None), limit)
        assert len(cut) <= limit
        parsed = orjson.loads(cut)
        assert reason.startswith(parsed["reason"])
        assert parsed["source"]["offset"] == 17
