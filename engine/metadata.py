"""Remote-write metadata for the worker: every worker reads the whole compacted metadata topic.

Remote-write 1.0 sends metric types in requests of their own, without job or instance labels, so they
cannot travel with the samples of one (service, family) key. Ingest publishes them on
``kafka.topics.metadata`` (compacted, key = family, value ``{"family": ..., "type": ...}``); each worker
reads every partition from the beginning with a plain consumer (no group: every worker needs all of it)
and follows it live, feeding :class:`~engine.preparation.FamilyTypes`. Until a family's type is known, the
name decides; a later retype is counted there.
"""

from __future__ import annotations

import logging
from typing import Final

import orjson

from engine.config import KafkaConfig
from engine.follower import Records, follow_topic
from engine.preparation import FamilyTypes
from engine.raw import MetricKind

log = logging.getLogger(__name__)

__all__ = ["MetadataFollower", "parse_metadata"]

_KINDS: Final = {k.value: k for k in MetricKind}
_MAX_FAMILY: Final = 4096


def parse_metadata(key: bytes | None, value: bytes | None) -> tuple[str, MetricKind] | str | None:
    """One metadata record as (family, kind); a reason when it is invalid; ``None`` for a tombstone."""
    if value is None:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(doc, dict):
        return "not a JSON object"
    family, kind = doc.get("family"), doc.get("type")
    if type(family) is not str or not 0 < len(family) <= _MAX_FAMILY:
        return "'family' must be a non-empty string"
    if key is not None and key != family.encode():
        return "the key is not the family"
    if type(kind) is not str or kind not in _KINDS:
        return f"'type' must be one of {sorted(_KINDS)}"
    return family, _KINDS[kind]


class MetadataFollower:
    """Reads the metadata topic into ``types``; :meth:`run` until cancelled, never raising for a record."""

    def __init__(self, kafka: KafkaConfig, types: FamilyTypes) -> None:
        self.kafka = kafka
        self.types = types
        self.records = 0
        self.invalid = 0

    async def run(self) -> None:
        await follow_topic(self.kafka, self.kafka.topics.metadata, self.handle)

    def handle(self, records: Records) -> None:
        learned: dict[str, MetricKind] = {}
        for record in records:
            self.records += 1
            got = parse_metadata(record.key, record.value)
            if isinstance(got, tuple):
                learned[got[0]] = got[1]
            elif got is not None:
                self.invalid += 1
                log.warning("metadata record %s/%d refused: %s", record.topic, record.offset, got)
        if learned:
            self.types.learn(learned)
