"""The worker's record handling without Kafka: events, dead letters, checkpoints."""

from __future__ import annotations

import orjson
import pytest

from engine.bank import ModelBank
from engine.config import LabelsConfig, load_config
from engine.guard import SeriesGuard
from engine.processor import Processor, Source
from engine.raw import RawSeries
from engine.records import encode_raw
from engine.samples import Series, analysis_key, encode_batch, family_of, sample_key

NOW = 1_700_000_000_000
SRC = Source("vigil.samples", 3, 42)


def processor(bank: ModelBank | None = None) -> Processor:
    return Processor(bank or ModelBank(load_config(None)), max_future_ms=600_000)


def incident_batch(instance: str = "pod-a", n: int = 260) -> bytes:
    """A steady series past its learning period (200 samples), then five samples 100 times higher."""
    points = [(NOW - (n - i) * 15_000, 100.0 if i < n - 5 else 10_000.0) for i in range(n)]
    return encode_batch([Series("checkout", "http_errors_total:rate", instance, points)])


def test_an_incident_becomes_one_cloud_event_keyed_by_analysis_key() -> None:
    outcome = processor().handle(incident_batch(), SRC, now_ms=NOW)
    assert outcome.deadletters == []
    assert outcome.samples == 260
    assert len(outcome.events) == 1
    key, raw = outcome.events[0]
    assert key == analysis_key("checkout", "http_errors_total:rate")
    event = orjson.loads(raw)
    assert event["specversion"] == "1.0"
    assert event["type"] == "vigil.anomaly.opened"
    assert event["data"]["instance"] == "pod-a"
    assert event["data"]["value"] == 10_000.0
    assert event["data"]["window"]["start_ms"] <= event["data"]["window"]["end_ms"]


def test_the_same_input_gives_the_same_event_id() -> None:
    first = processor().handle(incident_batch(), SRC, now_ms=NOW).events
    second = processor().handle(incident_batch(), SRC, now_ms=NOW).events
    assert orjson.loads(first[0][1])["id"] == orjson.loads(second[0][1])["id"]


@pytest.mark.parametrize("raw", [None, b"\xff\x00", b'{"v":1,"series":{}}', b"[]"])
def test_unusable_records_go_to_the_dead_letter_topic_with_reason_and_source(raw: bytes | None) -> None:
    p = processor()
    outcome = p.handle(raw, SRC, now_ms=NOW)
    assert outcome.events == []
    [dead] = [orjson.loads(d) for d in outcome.deadletters]
    assert dead["reason"]
    assert dead["source"] == {"topic": "vigil.samples", "partition": 3, "offset": 42}
    assert "payload_base64" in dead
    assert p.deadlettered == 1


def test_a_failing_model_costs_one_series_not_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    bank = ModelBank(load_config(None))
    real = bank.observe

    def flaky(series: Series, key: bytes | None = None) -> list[dict[str, object]]:
        if series.instance == "boom":
            raise ZeroDivisionError("model bug")
        return real(series, key)

    monkeypatch.setattr(bank, "observe", flaky)
    raw = encode_batch([Series("s", "m", "boom", [(NOW, 1.0)]), Series("s", "m", "fine", [(NOW, 1.0)])])
    outcome = processor(bank).handle(raw, SRC, now_ms=NOW)
    assert outcome.samples == 1
    [dead] = [orjson.loads(d) for d in outcome.deadletters]
    assert "model bug" in dead["reason"]
    assert dead["payload"]["instance"] == "boom"


def key_of(service: str, metric: str) -> bytes:
    return sample_key(service, family_of(metric))


def test_checkpoints_restore_models_lazily() -> None:
    config = load_config(None)
    bank = ModelBank(config)
    processor(bank).handle(incident_batch(n=40), SRC, now_ms=NOW)
    saved = dict(bank.checkpoints(lambda key: True))
    key = key_of("checkout", "http_errors_total:rate")
    assert list(saved) == [key] == [b"checkout\x1fhttp_errors"]
    assert dict(bank.checkpoints(lambda key: True)) == {}  # nothing changed since

    restored = ModelBank(config, load=saved.get)
    restored.observe(Series("checkout", "http_errors_total:rate", "pod-a", [(NOW, 100.0)]))
    assert restored.units[key].guards[("http_errors_total:rate", "pod-a")].detector.n == 41


def test_forget_drops_keys_that_moved_away() -> None:
    bank = ModelBank(load_config(None))
    bank.observe(Series("s", "a", "i", [(NOW, 1.0)]))
    bank.observe(Series("s", "b", "i", [(NOW, 1.0)]))
    bank.forget(lambda key: key == key_of("s", "a"))
    assert list(bank.units) == [key_of("s", "a")]


@pytest.mark.parametrize("default_service", [None, "other"])
def test_raw_series_are_keyed_and_counted_alike_on_every_record(default_service: str | None) -> None:
    """Label sets seen before are not read again (their sample key is remembered): the second and third
    record of the same series must give what the first gave."""
    config = load_config(None)
    config = config.model_copy(update={"labels": LabelsConfig(default_service=default_service)})
    p = processor(ModelBank(config))
    with_job = (("__name__", "queue_depth"), ("instance", "a:9100"), ("job", "api"))
    without = (("__name__", "queue_depth"), ("instance", "b:9100"))
    for i in range(3):
        raw = encode_raw([RawSeries(with_job, [(NOW + i, 1.0)]), RawSeries(without, [(NOW + i, 2.0)])])
        outcome = p.handle(raw, SRC, now_ms=NOW + 10)
        assert outcome.deadletters == []
        assert outcome.samples == (1 if default_service is None else 2)
    assert p.raw_samples == 6
    if default_service is None:
        assert p.counts["no_service"] == 3
        assert list(p.bank.units) == [sample_key("api", "queue_depth")]
    else:
        assert "no_service" not in p.counts
        assert list(p.bank.units) == [sample_key("api", "queue_depth"), sample_key("other", "queue_depth")]
    assert p.bank.units[sample_key("api", "queue_depth")].guards[("queue_depth", "a:9100")].detector.n == 3


def test_a_failing_model_costs_one_raw_series_not_the_others_of_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Raw series are observed per key (the key's unit looked up once): one model's failure still costs only
    its own series, dead-lettered with the reason."""
    real = SeriesGuard.observe

    def flaky(self: SeriesGuard, ts_ms: int, value: float) -> object:
        if value == 13.0:
            raise ZeroDivisionError("model bug")
        return real(self, ts_ms, value)

    monkeypatch.setattr(SeriesGuard, "observe", flaky)
    labels = [(("__name__", "q"), ("instance", f"i{n}"), ("job", "api")) for n in range(3)]
    raw = encode_raw([RawSeries(lab, [(NOW, v)]) for lab, v in zip(labels, (1.0, 13.0, 2.0), strict=True)])
    p = processor()
    outcome = p.handle(raw, SRC, now_ms=NOW)
    assert outcome.samples == 2
    assert p.processed == 2
    [dead] = [orjson.loads(d) for d in outcome.deadletters]
    assert "model bug" in dead["reason"]
    assert dead["payload"]["instance"] == "i1"
    guards = p.bank.units[sample_key("api", "q")].guards
    assert guards[("q", "i0")].detector.n == guards[("q", "i2")].detector.n == 1
