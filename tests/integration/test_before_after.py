"""``before_after`` and ``load_test`` on a real Prometheus holding generated data (loaded with promtool).

One gauge series per service (``app_latency_seconds``, 5 % lognormal noise every 15 s) over the hour
around a deploy at 10:30, the same hour a day and a week earlier, and an earlier load-test run at 08:00:
- ``regress``: 0.1 s everywhere, 0.15 s after the deploy: fails blaming the latency;
- ``same``: 0.1 s everywhere: passes;
- ``daily``: 0.1 s before the deploy, 0.2 s from 10:30 every day (a daily peak): passes, since it is
  normal at that hour yesterday and a week ago.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from connectors.verifier import verify
from engine.config import VigilConfig
from engine.errors import ConfigError
from engine.verification import Outcome, Verdict
from engine.verification.request import parse_request, plan
from tests.fixtures.prometheus import Prometheus
from tests.fixtures.tsdb import families, prometheus_with
from vigil.cli import app

pytestmark = [pytest.mark.integration]

DEPLOY = 1_796_207_400  # 2026-12-02T10:30:00Z
DAY = 86_400
LEVELS = {  # service -> (before the deploy, after it, the same hours on earlier days)
    "regress": (0.1, 0.15, 0.1),
    "same": (0.1, 0.1, 0.1),
    "daily": (0.1, 0.2, 0.2),
}


def generate(seed: int = 3) -> str:
    rng = random.Random(seed)
    data: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
    for job, (before, after, earlier) in LEVELS.items():
        points = []
        for back in (7 * DAY, DAY, 0):
            for k in range(-30 * 4, 30 * 4 + 1):
                t = DEPLOY - back + 15 * k
                level = (after if back == 0 else earlier) if k >= 0 else before
                points.append((t, level * math.exp(rng.gauss(0, 0.05))))
        # an earlier load-test run at 08:00-08:30, at the level before the deploy
        points += [(DEPLOY - 9000 + 15 * k, before * math.exp(rng.gauss(0, 0.05))) for k in range(121)]
        data[(("job", job),)] = sorted(points)
    return families({"app_latency_seconds": data})


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with prometheus_with(generate(), tmp_path_factory.mktemp("prometheus-before-after")) as running:
        yield running


def config(prometheus: Prometheus) -> VigilConfig:
    return VigilConfig.model_validate({"poller": {"sources": [{"name": "main", "url": prometheus.url}]}})


def request(service: str, **extra: Any) -> dict[str, Any]:
    return {
        "service": service,
        "type": "before_after",
        "selector": f'job="{service}"',
        "deployed_at": "2026-12-02T10:30:00Z",
        "end": "2026-12-02T11:00:00Z",
        "metrics": [
            {"name": "latency", "query": "max(app_latency_seconds{ {{selector}} })", "direction": "higher"}
        ],
        **extra,
    }


def judge(prometheus: Prometheus, doc: dict[str, Any]) -> Verdict:
    conf = config(prometheus)
    return asyncio.run(verify(conf, plan(parse_request(doc), conf)))


def test_a_regression_after_the_deploy_fails_blaming_the_metric(prometheus: Prometheus) -> None:
    verdict = judge(prometheus, request("regress"))
    assert verdict.outcome is Outcome.FAIL, verdict.reason
    assert "every reference" in verdict.reason
    (latency,) = verdict.metrics
    assert latency.result == "high"
    assert latency.regression
    assert verdict.decided_at_ms is not None
    assert verdict.decided_at_ms <= (DEPLOY + 600) * 1000
    # the ML view, trained on the 30 minutes before the deploy, finds every step after it unusual
    ml = latency.ml
    assert ml is not None
    assert ml.trained == 121
    assert ml.steps > 0
    assert ml.anomalous == ml.steps
    assert ml.expected is not None
    assert abs(ml.expected - 0.1) < 0.01  # what it would look like without the deploy


def test_no_change_passes(prometheus: Prometheus) -> None:
    verdict = judge(prometheus, request("same"))
    assert verdict.outcome is Outcome.PASS, verdict.reason
    assert verdict.metrics[0].result == "pass"
    ml = verdict.metrics[0].ml
    assert ml is not None
    assert (ml.steps, ml.anomalous) == (121, 0)


def test_a_daily_pattern_passes(prometheus: Prometheus) -> None:
    verdict = judge(prometheus, request("daily"))
    assert verdict.outcome is Outcome.PASS, verdict.reason
    # worse than just before the deploy, but normal at that hour a day and a week earlier
    assert "a day earlier" in verdict.reason
    assert "before the deploy: latency high" in verdict.reason


def test_a_reference_without_data_is_left_out(prometheus: Prometheus) -> None:
    # from 10:45 a week earlier has data; a deploy "at 09:00" has none before it (nothing before 10:00)
    doc = request("regress", deployed_at="2026-12-02T10:30:00Z", start="2026-12-02T10:30:00Z")
    assert judge(prometheus, doc).outcome is Outcome.FAIL
    nothing = request("same", type="load_test", deployed_at=None, baseline_start="2026-11-01T08:00:00Z")
    del nothing["deployed_at"]
    nothing["start"] = "2026-12-02T10:30:00Z"
    verdict = judge(prometheus, nothing)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "no data" in verdict.reason


def test_load_test_against_an_earlier_run(prometheus: Prometheus) -> None:
    def load_test(service: str) -> Verdict:
        doc = request(service, type="load_test", baseline_start="2026-12-02T08:00:00Z")
        del doc["deployed_at"]
        doc["start"] = "2026-12-02T10:30:00Z"
        return judge(prometheus, doc)

    assert load_test("regress").outcome is Outcome.FAIL
    assert load_test("regress").metrics[0].result == "high"
    assert load_test("same").outcome is Outcome.PASS
    assert load_test("daily").outcome is Outcome.FAIL  # no day to excuse it: only the earlier run counts


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"deployed_at": None}, "needs deployed_at"),
        ({"selector": None}, "needs selector"),
        ({"baseline": 'version="v1"'}, "baseline is not a field of type before_after"),
        ({"canary": 'version="v1"'}, "canary is not a field of type before_after"),
        ({"baseline_start": "2026-12-02T08:00:00Z"}, "baseline_start is not a field"),
        ({"start": "2026-12-02T10:00:00Z"}, "start is before deployed_at"),
        ({"deployed_at": "2026-12-02T10:30:00"}, "time zone"),
        ({"selector": "{{{"}, "label matchers"),
        ({"type": "load_test"}, "needs one of baseline_start and baseline_run"),
        (
            {
                "type": "load_test",
                "deployed_at": None,
                "baseline_start": "2026-12-02T12:00:00Z",
                "start": "2026-12-02T10:30:00Z",
            },
            "baseline_start is not before start",
        ),
        ({"type": "ab"}, "type"),
        ({"deploy_time": "x"}, "Extra inputs"),
    ],
)
def test_bad_requests_name_the_field(change: dict[str, Any], reason: str) -> None:
    doc = request("same")
    for key, value in change.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    with pytest.raises(ConfigError, match=reason):
        parse_request(doc)


def test_canary_still_needs_its_two_groups() -> None:
    with pytest.raises(ConfigError, match="needs baseline"):
        parse_request({"service": "a", "canary": 'v="2"', "pack": ["http"], "duration": "5m"})
    with pytest.raises(ConfigError, match="selector is not a field of type canary"):
        parse_request(
            {
                "service": "a",
                "baseline": 'v="1"',
                "canary": 'v="2"',
                "selector": 'job="a"',
                "pack": ["http"],
                "duration": "5m",
            }
        )


def test_baseline_run_is_for_the_api_to_look_up(prometheus: Prometheus) -> None:
    doc = request("same", type="load_test", baseline_run="run-1", start="2026-12-02T10:30:00Z")
    del doc["deployed_at"]
    with pytest.raises(ConfigError, match="baseline_run: an earlier verification is looked up by the API"):
        plan(parse_request(doc), config(prometheus))
    with pytest.raises(ConfigError, match="baseline_run is not a field of type before_after"):
        parse_request(request("same", baseline_run="run-1"))


def test_vigil_verify_before_after_exits_by_the_verdict(prometheus: Prometheus, tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text(f"poller:\n  sources: [{{name: main, url: '{prometheus.url}'}}]\n")

    def cli(service: str, *extra: str) -> Result:
        args = ["verify", "-c", str(path), "--service", service, "--type", "before_after"]
        args += ["--selector", f'job="{service}"', "--deployed-at", "2026-12-02T10:30:00Z"]
        args += [
            "--end",
            "2026-12-02T11:00:00Z",
            "--metric",
            "latency=max(app_latency_seconds{ {{selector}} })",
        ]
        return CliRunner().invoke(app, [*args, *extra])

    failed = cli("regress")
    assert failed.exit_code == 1, failed.output
    assert "regressed against every reference" in failed.output
    assert "against before the deploy, a day earlier, a week earlier" in failed.output
    assert cli("daily").exit_code == 0
    refused = cli("same", "--baseline", 'version="v1"')
    assert refused.exit_code == 2
    assert "baseline is not a field of type before_after" in refused.output
