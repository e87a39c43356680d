"""config/argo/analysis-template.yaml against real answers: its web measurement sent to the API (embedded
broker, real Prometheus with generated canary data), and its conditions evaluated by Argo's expression
library and decision table (a Go helper in tests/argo built with the Go toolchain)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from connectors.api import ApiServer
from engine.config import VigilConfig
from tests.fixtures.canary import END, HASHES, START
from tests.integration.test_api import config, prometheus, started  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = yaml.safe_load((ROOT / "config" / "argo" / "analysis-template.yaml").read_text())
#: the other analysis types, one template each (their bodies differ in fields, so no template serves two)
TEMPLATES = {
    kind: yaml.safe_load((ROOT / "config" / "argo" / f"analysis-template-{kind}.yaml").read_text())
    for kind in ("before-after", "load-test")
}

assert shutil.which("go"), "needs the Go toolchain (tests/argo evaluates Argo's conditions with its library)"


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("argo") / "argo-eval"
    subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=ROOT / "tests" / "argo",
        check=True,
        timeout=240,
        capture_output=True,
    )
    return binary


@pytest_asyncio.fixture
async def server(config: VigilConfig) -> AsyncIterator[ApiServer]:  # noqa: F811
    running = await started(config)
    yield running
    await running.stop()


def render(value: Any, args: dict[str, str]) -> Any:
    """Argo's ``{{args.name}}`` substitution over the template's strings."""
    if isinstance(value, str):
        for name, given in args.items():
            value = value.replace("{{args." + name + "}}", given)
        return value
    if isinstance(value, list):
        return [render(v, args) for v in value]
    if isinstance(value, dict):
        return {k: render(v, args) for k, v in value.items()}
    return value


def phases(evaluator: Path, metric: dict[str, Any], results: list[str]) -> list[str]:
    doc = {"success": metric["successCondition"], "failure": metric["failureCondition"], "results": results}
    done = subprocess.run(
        [str(evaluator)], input=json.dumps(doc), capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.split()


async def measure(server: ApiServer, web: dict[str, Any], extra: dict[str, Any]) -> str:
    """One measurement as Argo's web provider takes it: the request, a 2xx, the JSONPath value."""
    path = web["url"].split("/api/", 1)[1]
    headers = {h["key"]: h["value"] for h in web["headers"]}
    body = web["jsonBody"] | extra
    async with (
        aiohttp.ClientSession() as session,
        session.request(web["method"], f"{server.url}/api/{path}", json=body, headers=headers) as r,
    ):
        assert 200 <= r.status < 300, await r.text()
        doc = await r.json()
    assert web["jsonPath"] == "{$.state}"
    state: str = doc["state"]
    return state


async def test_the_template_gives_argo_the_right_phase(server: ApiServer, evaluator: Path) -> None:
    (metric,) = TEMPLATE["spec"]["metrics"]
    assert metric["failureLimit"] == 0
    assert metric["inconclusiveLimit"] == 0
    defaults = {a["name"]: a.get("value", "") for a in TEMPLATE["spec"]["args"]}
    replay = {"start": START, "end": END}  # the past window of the generated data instead of live
    results = {}
    for service in ("errors5", "clean", "idle"):
        args = defaults | {"service": service, "canary-hash": HASHES["v42"], "baseline-hash": HASHES["v41"]}
        web = render(metric["provider"]["web"], args)
        results[service] = await measure(server, web, replay)
    # another rollout (its own key), live: the first answer comes before any verdict
    live_args = defaults | {
        "service": "fewerrors",
        "canary-hash": HASHES["v42"],
        "baseline-hash": HASHES["v41"],
    }
    live = render(metric["provider"]["web"], live_args)
    live["url"] = live["url"].replace("wait_s=50", "wait_s=0")
    results["running"] = await measure(server, live, {})
    again = await measure(server, render(metric["provider"]["web"], defaults | args), replay)
    assert again == "inconclusive"  # the same rollout measured again: the same verification (its key)
    assert results == {"errors5": "fail", "clean": "pass", "idle": "inconclusive", "running": "running"}
    got = phases(evaluator, metric, list(results.values()))
    assert got == ["Failed", "Successful", "Inconclusive", "Successful"]


async def test_a_late_verification_is_inconclusive_for_argo(evaluator: Path) -> None:
    """A live verification still running well after its planned end: ``late``, which the template reads
    as Inconclusive (a person looks), not as the Successful of a verification still deciding."""
    from connectors.api.jobs import LATE_S, state_of

    (metric,) = TEMPLATE["spec"]["metrics"]
    due = 1_000_000
    running = {"verdict": None, "status": "running", "due_at_ms": due}
    states = [state_of(running, due), state_of(running, due + int(LATE_S * 1000) + 1)]
    assert states == ["running", "late"]
    assert phases(evaluator, metric, states) == ["Successful", "Inconclusive"]


async def test_the_before_after_and_load_test_templates_give_argo_the_right_phase(
    server: ApiServer, evaluator: Path
) -> None:
    """The generated data have no deploy, but the ``leak`` canary pods' memory grows 1 % a minute: later
    against earlier is a regression, which ``clean`` pods do not show; a 2-minute window is too short."""
    (canary_metric,) = TEMPLATE["spec"]["metrics"]
    measured: dict[str, list[str]] = {}
    for kind, template in TEMPLATES.items():
        (metric,) = template["spec"]["metrics"]
        for field in ("successCondition", "failureCondition", "interval", "count", "failureLimit"):
            assert metric[field] == canary_metric[field], (kind, field)  # one reading for every type
        defaults = {a["name"]: a.get("value", "") for a in template["spec"]["args"]}
        measured[kind] = []
        if kind == "load-test":  # the earlier run: any verification with a start, by its key
            first = {"service": "leak", "baseline": 'version="v41"', "canary": 'version="v42"'}
            first |= {"pack": ["process"], "start": "2026-12-02T10:02:00Z", "end": "2026-12-02T10:12:00Z"}
            for service in ("leak", "clean"):
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(
                        f"{server.url}/api/v1/verifications",
                        json=first | {"service": service, "key": f"{service}-load-test-1"},
                    ) as r,
                ):
                    assert r.status == 201, await r.text()
        windows = {
            "before-after": [
                ("leak", {"deployed_at": "2026-12-02T10:17:00Z", "end": END}),
                ("clean", {"deployed_at": "2026-12-02T10:17:00Z", "end": END}),
                ("clean", {"deployed_at": "2026-12-02T10:30:00Z", "end": END}),
            ],
            "load-test": [
                ("leak", {"start": "2026-12-02T10:20:00Z", "end": "2026-12-02T10:30:00Z"}),
                ("clean", {"start": "2026-12-02T10:20:00Z", "end": "2026-12-02T10:30:00Z"}),
                ("clean", {"start": "2026-12-02T10:30:00Z", "end": END}),
            ],
        }[kind]
        for i, (service, replay) in enumerate(windows):
            args = defaults | {
                "service": service,
                "selector": 'version="v42"',
                "pack": "process",
                "revision": f"r{i}",
                "run": f"{i + 2}",
                "baseline-run-id": "1",
            }
            web = render(metric["provider"]["web"], args)
            measured[kind].append(await measure(server, web, replay))
        # live, the first answer comes before any verdict (deployed_at: the time of this first call)
        live_args = defaults | {
            "service": "fewerrors",
            "selector": 'version="v42"',
            "revision": "live",
            "run": "live",
            "baseline-run-id": "1",
        }
        if kind == "load-test":
            live_args["service"] = "clean"
        live = render(metric["provider"]["web"], live_args)
        live["url"] = live["url"].replace("wait_s=50", "wait_s=0")
        measured[kind].append(await measure(server, live, {}))
    expected = ["fail", "pass", "inconclusive", "running"]
    assert measured == {"before-after": expected, "load-test": expected}
    for kind, (metric,) in ((k, t["spec"]["metrics"]) for k, t in TEMPLATES.items()):
        got = phases(evaluator, metric, measured[kind])
        assert got == ["Failed", "Successful", "Inconclusive", "Successful"], kind
    # an earlier run nobody knows is a 400 (Argo counts it as an Error of the measurement, never a pass)
    (metric,) = TEMPLATES["load-test"]["spec"]["metrics"]
    defaults = {a["name"]: a.get("value", "") for a in TEMPLATES["load-test"]["spec"]["args"]}
    args = defaults | {"service": "clean", "selector": 'version="v42"', "run": "9", "baseline-run-id": "nope"}
    web = render(metric["provider"]["web"], args)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/api/{web['url'].split('/api/', 1)[1]}", json=web["jsonBody"]) as r,
    ):
        assert r.status == 400
        assert "baseline_run" in (await r.json())["reason"]
