"""Verification requests: defaults, the plan's queries, and every bad input refused with its field."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from engine.config import Direction, MetricType, VigilConfig
from engine.errors import ConfigError
from engine.verification.request import parse_request, plan
from vigil.cli import app

CONFIG = VigilConfig(poller={"sources": [{"name": "main", "url": "http://127.0.0.1:9"}]})
BASE: dict[str, Any] = {
    "service": "checkout",
    "baseline": 'version="v41"',
    "canary": 'version="v42"',
    "pack": ["http"],
    "start": "2026-11-01T19:00:00Z",
    "end": "2026-11-01T19:30:00Z",
}


def test_defaults_and_the_plan() -> None:
    request = parse_request(
        BASE | {"metrics": [{"name": "my_errors", "query": 'sum(e{job="checkout",{{selector}}})'}]}
    )
    assert request.type == "canary"
    assert request.step_s == 15.0
    made = plan(request, CONFIG)
    assert made.source == "main"
    assert made.instance_label == "instance"
    assert made.settings.alpha == 0.01
    by_name = {m.spec.name: m for m in made.metrics}
    assert by_name["my_errors"].queries["canary"]["query"] == 'sum(e{job="checkout",version="v42"})'
    assert by_name["my_errors"].spec.direction is Direction.HIGHER  # from the default rules
    errors = by_name["http_error_ratio"]
    assert errors.spec.counts
    assert errors.spec.type is MetricType.ERRORS
    assert 'version="v41"' in errors.queries["baseline"]["numerator"]
    assert errors.queries["canary"]["instance_numerator"].startswith("sum by (instance) (rate(")
    assert "{{" not in str(errors.queries)
    assert by_name["http_error_ratio"].spec.stride == 4  # rate(...[1m]) at 15 s
    assert by_name["my_errors"].spec.stride == 1  # no range selector
    with_process = plan(parse_request(BASE | {"pack": ["http", "process"]}), CONFIG)
    strides = {m.spec.name: m.spec.stride for m in with_process.metrics}
    assert strides["process_restarts"] == 20  # changes(...[5m])
    assert strides["http_latency_p95"] == 4  # not slowed by the process pack


def test_a_plain_error_ratio_is_split_into_counts() -> None:
    ratio = 'sum(rate(e{job="a",code="500",{{selector}}}[1m])) / sum(rate(e{job="a",{{selector}}}[1m]))'
    doc = BASE | {
        "pack": [],
        "metrics": [{"name": "checkout_errors", "query": ratio}, {"name": "mem", "query": "a / b"}],
    }
    by_name = {m.spec.name: m for m in plan(parse_request(doc), CONFIG).metrics}
    errors = by_name["checkout_errors"]
    assert errors.spec.counts
    assert errors.queries["canary"]["numerator"] == 'sum(rate(e{job="a",code="500",version="v42"}[1m]))'
    assert errors.queries["canary"]["denominator"] == 'sum(rate(e{job="a",version="v42"}[1m]))'
    assert not by_name["mem"].spec.counts  # not an error ratio: a bare ratio, judged as values


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        ({"pack": ["nope"]}, "pack.0:"),
        ({"pack": [], "metrics": []}, "nothing to verify"),
        ({"baseline": "version}"}, "baseline:"),
        ({"canary": ""}, "canary:"),
        ({"step": "fast"}, "step:"),
        ({"step": "0s"}, "between 1s and 7 days"),
        ({"start": "2026-11-01T19:00:00"}, "needs a time zone"),
        ({"end": "2026-11-01T18:00:00Z"}, "end is not after start"),
        ({"end": None}, "give end"),
        ({"sensitivity": "extreme"}, "sensitivity:"),
        ({"type": "ab_test"}, "type:"),
        ({"metrics": [{"name": "a", "query": "x", "numerator": "n"}]}, "numerator and denominator"),
        ({"metrics": [{"name": "a b", "query": "x"}]}, "metrics.0.name"),
        ({"metrics": [{"name": "a", "query": "x", "weight": -1}]}, "weight"),
        ({"metrics": [{"name": "a", "query": "x"}, {"name": "a", "query": "y"}]}, "repeat"),
        ({"service": "x" * 5000}, "service:"),
        ({"metrics": [{"name": f"m{i}", "query": "x"} for i in range(501)]}, "metrics:"),
    ],
)
def test_bad_requests_name_the_field(change: dict[str, Any], message: str) -> None:
    doc = {k: v for k, v in (BASE | change).items() if v is not None}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_request(doc)


@pytest.mark.parametrize("doc", [None, [], "x", 3, {"service": {"nested": 1}}])
def test_hostile_shapes_are_refused(doc: object) -> None:
    with pytest.raises(ConfigError):
        parse_request(doc)


def test_an_unknown_source_is_refused() -> None:
    with pytest.raises(ConfigError, match="no source named 'other'"):
        plan(parse_request(BASE | {"source": "other"}), CONFIG)
    with pytest.raises(ConfigError, match=r"poller\.sources is empty"):
        plan(parse_request(BASE), VigilConfig())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "vigil.yaml"
    path.write_text("poller:\n  sources: [{name: main, url: 'http://127.0.0.1:9', retries: 0}]\n")
    return path


COMMON = ["--service", "s", "--baseline", 'v="1"', "--canary", 'v="2"']


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pack", "nope", "--start", "2026-01-01T00:00:00Z", "--end", "2026-01-01T01:00:00Z"], "pack.0"),
        (["--pack", "http"], "give end"),
        (["--metric", "novalue", "--duration", "5m"], "--metric: expected NAME=QUERY"),
        (["--pack", "http", "--duration", "5m", "--source", "x"], "no source named 'x'"),
        (
            ["--pack", "http", "--start", "2026-01-01T00:00:00Z", "--end", "2026-01-01T01:00:00Z"],
            "cannot reach",
        ),
    ],
)
def test_vigil_verify_bad_input_exits_2(config: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["verify", "-c", str(config), *COMMON, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_vigil_api_needs_a_kafka(config: Path) -> None:
    result = CliRunner().invoke(app, ["api", "-c", str(config)])
    assert result.exit_code == 2
    assert "`vigil api` needs kafka.bootstrap_servers" in result.output


def test_the_api_section_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("api:\n  port: 70000\n")
    result = CliRunner().invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2
    assert "api.port" in result.output
    path.write_text("api:\n  tls: {cert_file: /x.pem}\n")
    result = CliRunner().invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2


def test_the_flagger_example_speaks_to_these_routes() -> None:
    import yaml

    from connectors.api.flagger import KINDS, request_of

    canary = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "config" / "flagger" / "canary.yaml").read_text()
    )
    for hook in canary["spec"]["analysis"]["webhooks"]:
        kind = hook["url"].rsplit("/", 1)[1]
        assert kind in KINDS
        assert kind == hook["type"]
        payload = {"name": "checkout", "namespace": "shop", "checksum": "1", "metadata": hook["metadata"]}
        request = parse_request(request_of(payload))
        assert request.duration == "30m"
        assert request.pack == ("http", "process")


def test_flagger_metadata_asks_for_every_type_of_verification() -> None:
    from connectors.api.flagger import request_of

    def asked(**metadata: str) -> Any:
        payload = {"name": "checkout", "namespace": "shop", "checksum": "9", "metadata": metadata}
        return parse_request(request_of(payload))

    before = asked(type="before_after", selector='job="checkout"', pack="http,process")
    assert (before.type, before.selector, before.duration) == ("before_after", 'job="checkout"', "30m")
    assert before.deployed_at is None  # live: the time of the first call, pinned when the job is created
    at = datetime.datetime(2026, 12, 2, 10, 30, tzinfo=datetime.UTC)
    pinned = before.pinned(at)
    assert pinned.deployed_at == pinned.start == at
    assert pinned.references()[0] == ("before the deploy", 30 * 60_000)
    replay = asked(
        type="before_after",
        selector='job="a"',
        deployed_at="2026-12-02T10:30:00Z",
        end="2026-12-02T11:00:00Z",
    )
    assert replay.start == replay.deployed_at
    load = asked(type="load_test", selector='job="a"', baseline_run="checkout-load-test-41")
    assert load.baseline_run == "checkout-load-test-41"
    assert asked(type="load_test", selector='job="a"', baseline_start="2026-12-01T10:00:00Z").baseline_start
    for metadata, reason in [
        ({"type": "before_after", "baseline": 'v="1"', "selector": 'job="a"'}, "baseline is not a field"),
        ({"type": "load_test", "selector": 'job="a"'}, "needs one of baseline_start and baseline_run"),
        ({"type": "before_after"}, "needs selector"),
        (
            {
                "type": "before_after",
                "selector": 'job="a"',
                "end": "2026-12-02T11:00:00Z",
                "start": "2026-12-02T10:00:00Z",
            },
            "needs deployed_at",
        ),
        ({"type": "blue", "selector": 'job="a"'}, "type"),
        ({"type": "before_after", "selector": 'job="a"', "deployed_at": "yesterday"}, "deployed_at"),
    ]:
        with pytest.raises(ConfigError, match=reason):
            asked(**metadata)


def test_flagger_gates_open_only_on_a_pass_and_checks_count_only_a_verdict() -> None:
    from connectors.api.flagger import CHECKS, GATES, answer

    def doc(verdict: str | None) -> dict[str, Any]:
        return {"verdict": verdict, "status": "running" if verdict is None else "done", "reason": "r"}

    got = {
        kind: [answer(kind, doc(v))[0] for v in (None, "pass", "fail", "inconclusive")]
        for kind in (*CHECKS, "rollback")
    }
    for kind in CHECKS:
        # a gate held while Vigil decides; a check lets the rollout go on meanwhile
        assert got[kind] == ([409, 200, 412, 412] if kind in GATES else [200, 200, 412, 412]), kind
    assert got["rollback"] == [409, 409, 200, 409]


def test_ml_history_is_a_canary_field_and_a_window_before_start() -> None:
    from connectors.verifier import history_window

    doc = {"service": "a", "baseline": 'v="1"', "canary": 'v="2"', "pack": ["http"]}
    doc |= {"start": "2026-12-02T10:30:00Z", "end": "2026-12-02T11:00:00Z"}
    config = VigilConfig.model_validate(
        {"poller": {"sources": [{"name": "main", "url": "http://127.0.0.1:1"}]}}
    )
    window = history_window(plan(parse_request(doc | {"ml_history": "50m"}), config))
    assert window is not None
    start = datetime.datetime(2026, 12, 2, 10, 30, tzinfo=datetime.UTC).timestamp() * 1000
    assert (window.start_ms, window.last_ms) == (start - 50 * 60_000, start - 15_000)
    assert history_window(plan(parse_request(doc), config)) is None
    with pytest.raises(ConfigError, match=r"ml_history: .*duration"):
        parse_request(doc | {"ml_history": "forever"})
    ba = {"service": "a", "type": "before_after", "selector": 'job="a"', "pack": ["http"], "duration": "5m"}
    with pytest.raises(ConfigError, match="ml_history is not a field of type before_after"):
        parse_request(ba | {"ml_history": "1h"})


def test_a_live_request_is_pinned_once_and_a_replay_never() -> None:
    at = datetime.datetime(2026, 12, 2, 10, 30, tzinfo=datetime.UTC)
    live = parse_request(
        {"service": "a", "baseline": 'v="1"', "canary": 'v="2"', "pack": ["http"], "duration": "5m"}
    )
    pinned = live.pinned(at)
    assert pinned.start == at
    assert pinned.pinned(at + datetime.timedelta(hours=1)) == pinned  # a take-over keeps the window
    replay = live.model_copy(update={"start": at, "end": at + datetime.timedelta(minutes=5)})
    assert replay.pinned(at + datetime.timedelta(hours=1)) is replay
    load = parse_request(
        {
            "service": "a",
            "type": "load_test",
            "selector": 'job="a"',
            "pack": ["http"],
            "duration": "5m",
            "baseline_start": "2026-12-02T11:00:00Z",
        }
    )
    with pytest.raises(ConfigError, match="baseline_start is not before start"):
        load.pinned(at)  # checked again once its start is known


def test_vigil_api_with_kafka_away_exits_1_so_vigil_run_restarts_it(tmp_path: Path) -> None:
    from connectors.broker import free_port

    path = tmp_path / "away.yaml"
    path.write_text(f"kafka:\n  bootstrap_servers: 127.0.0.1:{free_port()}\napi:\n  port: 0\n")
    result = CliRunner().invoke(app, ["api", "-c", str(path)])
    assert result.exit_code == 1, result.output
    assert "vigil: Kafka at 127.0.0.1:" in result.output
