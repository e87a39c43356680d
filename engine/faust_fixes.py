"""Two fixes to Faust 0.15's offset bookkeeping, without which at-least-once loses messages.

Seen here as one message per partition lost when a worker restarts and the group rebalances (the restart
test in ``tests/integration/test_pipeline.py`` caught it in about half of its runs):

1. A stream drops events fetched before a rebalance (older consumer generation, or flow suspended) but
   still *acks* them, so their offsets count as processed although they never were.
2. ``Consumer._new_offset`` looks for a gap between the committed offset and the first acked offset with an
   off-by-one (``min(acked) - committed > 1``; the committed offset is the *next* offset to read), so the
   commit can jump over exactly one unprocessed message.

With both fixed, a dropped event leaves a gap that the commit cannot pass: the message is never committed
as processed, so after the next rebalance or restart it is fetched again (at-least-once holds in the commit
log). These two matter for topics whose offsets Faust commits; ``vigil.samples`` is no longer one of them
(engine.commits commits it after each checkpoint), but other agents may be.

3. A hook after ``Consumer.perform_seek`` (:func:`on_positioned`): Faust positions every assigned partition
   at its committed offset there once table recovery is done, before the partition's first event. The hook
   tells engine.commits those offsets, so it knows where each partition really starts and can seek back
   when Faust drops records it fetched during start-up (it clears its stream queues when flow resumes,
   and does not seek at all for a partition without a committed offset).

4. :func:`fetch_wait`: Faust builds its worker consumer with ``fetch_max_wait_ms=1500`` and no setting;
   on the embedded broker, which answers a fetch only when that wait is over, it is set shorter
   (:data:`connectors.kafka.FETCH_WAIT_MS`).

Imported by ``engine.app`` only.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

_event_ack = faust.Event.ack
_new_offset = Consumer._new_offset
_perform_seek = Consumer.perform_seek
_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer

#: app -> what to call with {tp: committed offset, or None when nothing is committed} after each seek
Positioned = Callable[[Mapping[TP, int | None]], Awaitable[None]]
_listeners: weakref.WeakKeyDictionary[Any, Positioned] = weakref.WeakKeyDictionary()


def _ack_unless_stale(event: Any) -> bool:
    app = event.app
    if event.message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
        return False  # not processed: it will be fetched again after the seek to the committed offset
    return bool(_event_ack(event))


def _new_offset_without_skipping(consumer: Any, tp: Any) -> int | None:
    acked = consumer._acked[tp]
    committed = consumer._committed_offset[tp]
    if acked and committed is not None:
        head = min(acked)
        if head > committed and not consumer._gap[tp].overlaps(committed, head):
            return None  # the message at `committed` has not been processed yet
    result: int | None = _new_offset(consumer, tp)
    return result


async def _perform_seek_and_tell(consumer: Any) -> None:
    await _perform_seek(consumer)
    # No await between the seek's bookkeeping and this read: these are the offsets it sought to.
    offsets = {tp: consumer._read_offset.get(tp) for tp in consumer.assignment()}
    listener = _listeners.get(consumer.app)
    if listener is not None:
        await listener(offsets)


def on_positioned(app: faust.App, listener: Positioned) -> None:
    """Call ``listener`` with the assigned partitions' committed offsets each time Faust seeks to them."""
    _listeners[app] = listener


def install() -> None:
    faust.Event.ack = _ack_unless_stale  # type: ignore[method-assign,assignment]
    Consumer._new_offset = _new_offset_without_skipping  # type: ignore[method-assign,assignment]
    Consumer.perform_seek = _perform_seek_and_tell  # type: ignore[method-assign,assignment]


def fetch_wait(ms: int) -> None:
    """Faust's worker consumers wait at most ``ms`` for records per fetch (Faust's own: 1500)."""

    def create(self: Any, transport: Any) -> Any:
        consumer = _create_worker_consumer(self, transport)
        consumer._fetch_max_wait_ms = ms  # read by AIOKafkaConsumer.start(), which builds its fetcher
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]
