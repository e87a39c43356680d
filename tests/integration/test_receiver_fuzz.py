"""Fuzzing the write endpoint over real HTTP while Kafka is healthy: no body — valid or not, random bytes,
broken snappy, broken protobuf, hostile sizes, odd headers — may get a 5xx (Prometheus resends a 5xx for
ever: one poison request would block a shard), and none may hit a bug (500).

The receiver runs as in production (:class:`~connectors.receiver.Receiver`, on its own event loop in a
thread, producing to the embedded broker); hypothesis posts over a keep-alive HTTP connection.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.broker import EmbeddedBroker
from connectors.receiver import Receiver
from engine.config import VigilConfig
from tests.fixtures.remote_write import (
    STALE_NAN,
    V1_CONTENT_TYPE,
    V2_CONTENT_TYPE,
    Series,
    labels_of,
    snappy,
    v1_body,
    v1_message,
    v2_message,
)
from tests.integration.test_receiver_http import MAX_BODY, limited

pytestmark = pytest.mark.integration

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


class ThreadedReceiver:
    """A :class:`Receiver` serving from an event loop of its own, so a synchronous test can talk to it."""

    def __init__(self, config: VigilConfig) -> None:
        self.receiver = Receiver(config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="receiver", daemon=True)

    def __enter__(self) -> ThreadedReceiver:
        self._thread.start()
        self._call(self.receiver.start())
        self._call(self.receiver.wait_connected(20))
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._call(self.receiver.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)


@pytest.fixture(scope="module")
def served(broker: EmbeddedBroker) -> Iterator[ThreadedReceiver]:
    config = limited(broker)
    config = config.model_copy(update={"receiver": config.receiver.model_copy(update={"port": 0})})
    with ThreadedReceiver(config) as served:
        yield served


class Client:
    """One keep-alive connection, reopened when the server closed it (it may, after a refusal)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, body: bytes, headers: dict[str, str]) -> int:
        for attempt in range(2):
            try:
                self.connection.request("POST", "/api/v1/write", body=body, headers=headers)
                response = self.connection.getresponse()
                response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.connection.close()
                return response.status
            except (ConnectionError, http.client.HTTPException):
                self.connection.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")


# --- strategies ---------------------------------------------------------------------------------------

NOW_MS = time.time_ns() // 1_000_000
label_text = st.text(max_size=12)
label_sets = st.builds(
    lambda name, job, rest: sorted({**rest, **job, "__name__": name}.items(), key=lambda kv: kv[0].encode()),
    st.text(min_size=1, max_size=12),
    st.one_of(st.just({}), st.fixed_dictionaries({"job": label_text})),  # mostly with a service
    st.dictionaries(st.text(min_size=1, max_size=8), label_text, max_size=4),
)
stamps = st.one_of(st.integers(NOW_MS - 10**7, NOW_MS + 10**6), st.integers(-(2**63), 2**63 - 1))
values = st.one_of(st.floats(), st.sampled_from([STALE_NAN, float("nan"), float("inf"), 0.0]))
series_lists = st.lists(
    st.builds(
        lambda labels, samples: Series(labels, sorted(samples)),
        label_sets,
        st.lists(st.tuples(stamps, values), max_size=3),
    ),
    max_size=6,
)


@st.composite
def raw_protobuf(draw: st.DrawFn) -> tuple[bytes, str]:
    version = draw(st.sampled_from(["1.0", "2.0"]))
    series = draw(series_lists)
    message = v1_message(series) if version == "1.0" else v2_message(series)
    return message.SerializeToString(), version


def damaged(data: bytes, draw: st.DrawFn) -> bytes:
    """``data`` with a few bytes changed, cut, or duplicated."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        action = draw(st.sampled_from(["flip", "cut", "repeat", "insert"]))
        if action == "flip":
            out[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del out[at:]
        elif action == "repeat":
            out[at:at] = out[at : at + draw(st.integers(1, 16))]
        else:
            out[at:at] = bytes(draw(st.lists(st.integers(0, 255), min_size=1, max_size=8)))
    return bytes(out)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """A body and the version its headers claim."""
    kind = draw(
        st.sampled_from(
            ["valid", "broken-protobuf", "broken-snappy", "random", "random-snappy", "huge-claim", "big"]
        )
    )
    claimed = draw(st.sampled_from(["1.0", "2.0"]))
    if kind == "valid":
        return snappy((raw := draw(raw_protobuf()))[0]), raw[1]
    if kind == "broken-protobuf":
        raw, version = draw(raw_protobuf())
        return snappy(damaged(raw, draw)), version
    if kind == "broken-snappy":
        raw, version = draw(raw_protobuf())
        return damaged(snappy(raw), draw), version
    if kind == "random":
        return draw(st.binary(max_size=3000)), claimed
    if kind == "random-snappy":
        return snappy(draw(st.binary(max_size=3000))), claimed
    if kind == "huge-claim":  # a snappy length header far over the limit, then little or nothing
        return bytes([0xFF, 0xFF, 0xFF, 0xFF, draw(st.integers(0x01, 0x0F))]) + draw(
            st.binary(max_size=64)
        ), claimed
    size = draw(st.integers(MAX_BODY - 100, MAX_BODY * 2))  # around and over the limits
    data = random.Random(size).randbytes(size)
    return (snappy(data) if draw(st.booleans()) else data), claimed


header_sets = st.one_of(
    st.just("protocol"),
    st.fixed_dictionaries(
        {
            "Content-Type": st.one_of(
                st.sampled_from([V1_CONTENT_TYPE, V2_CONTENT_TYPE, "application/x-protobuf;proto=x"]),
                st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
            ),
            "Content-Encoding": st.sampled_from(["snappy", "SNAPPY", "gzip", "", "snappy, gzip"]),
        }
    ),
)


def test_no_body_gets_a_5xx_while_kafka_is_healthy(served: ThreadedReceiver) -> None:
    client = Client(served.receiver.port)
    stats = served.receiver.ingest.stats
    seen: set[int] = set()

    @FUZZ
    @given(body=bodies(), headers=header_sets)
    def post(body: tuple[bytes, str], headers: str | dict[str, str]) -> None:
        data, version = body
        if headers == "protocol":
            content_type = V1_CONTENT_TYPE if version == "1.0" else V2_CONTENT_TYPE
            headers = {"Content-Type": content_type, "Content-Encoding": "snappy"}
        assert isinstance(headers, dict)
        status = client.post(data, headers)
        seen.add(status)
        assert status < 500, f"{status} for {data[:80]!r} with {headers}"

    try:
        post()
    finally:
        client.connection.close()
    assert stats.internal_errors == 0
    assert stats.requests.keys() == seen
    assert {204, 400, 413, 415} <= seen  # the fuzzing reached every kind of answer
    # valid bodies went all the way to Kafka (how many samples they held is up to the generator: a 204 may
    # answer a request with no series)
    assert stats.samples_written > 0
    # Kafka stayed healthy: a real request is still taken, its sample written
    written = stats.samples_written
    valid = v1_body([Series(labels_of(name="up", job="fuzz"), [(time.time_ns() // 1_000_000, 1.0)])])
    try:
        assert client.post(valid, {"Content-Type": V1_CONTENT_TYPE, "Content-Encoding": "snappy"}) == 204
    finally:
        client.connection.close()
    assert stats.samples_written == written + 1
