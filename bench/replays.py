"""60 half-hour replays submitted together through the API: time until all are done.

    python bench/replays.py [--runs 60] [--seed 1]

The issue's figure: "60 half-hour replays submitted together finish within 10 minutes here". Generated
canary runs (``tests/fixtures/canary.py``; half clean, half cycling through the canary bench's regressions)
are loaded into a real Prometheus with promtool; an in-process API server on an embedded broker (jobs on
its compacted topic, as in production) gets all the POSTs at once (http pack, 30 minutes at 15 s, default
``api.max_running`` 64, ``fail_fast`` on), and each job is long-polled until it is done. The baseline is
the same replays judged in-process with no API and no Kafka (``connectors.verifier.verify``, all at once),
measured in the same run; the ratio is API time over that.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.canary import LADDER, scenarios  # noqa: E402
from bench.common import machine  # noqa: E402
from connectors.api import ApiServer  # noqa: E402
from connectors.broker import EmbeddedBroker  # noqa: E402
from connectors.verifier import verify  # noqa: E402
from engine.config import LabelsConfig, PollerConfig, SourceConfig, VigilConfig, load_config  # noqa: E402
from engine.verification.request import parse_request, plan  # noqa: E402
from tests.fixtures.canary import END, START, generate  # noqa: E402
from tests.fixtures.tsdb import prometheus_with  # noqa: E402

URL = "/api/v1/verifications"


FAIL_FAST = True


def body(service: str) -> dict[str, Any]:
    return {
        "fail_fast": FAIL_FAST,
        "service": service,
        "baseline": 'version="v41"',
        "canary": 'version="v42"',
        "pack": ["http"],
        "start": START,
        "end": END,
    }


def configured(prometheus_url: str, bootstrap: str) -> VigilConfig:
    base = load_config(None)
    tag = f"bench{int(time.time())}"
    topics = base.kafka.topics.model_copy(
        update={"verdicts": f"{tag}.verdicts", "verifications": f"{tag}.verifications"}
    )
    kafka = base.kafka.model_copy(
        update={"bootstrap_servers": bootstrap, "embedded_quirks": True, "topics": topics, "app_id": tag}
    )
    return base.model_copy(
        update={
            "kafka": kafka,
            "labels": LabelsConfig(instance="pod"),
            "poller": PollerConfig(sources=(SourceConfig(name="main", url=prometheus_url, retries=2),)),
            "api": base.api.model_copy(update={"port": 0}),
        }
    )


async def through_api(config: VigilConfig, services: list[str]) -> tuple[float, collections.Counter[str]]:
    server = ApiServer(config)
    await server.start()
    try:
        async with asyncio.timeout(60):
            await server.api.jobs.ready.wait()
        async with aiohttp.ClientSession() as session:

            async def one(service: str) -> str:
                async with session.post(server.url + URL, json=body(service)) as r:
                    assert r.status == 201, await r.text()
                    ident = (await r.json())["id"]
                while True:
                    async with session.get(f"{server.url}{URL}/{ident}", params={"wait_s": "30"}) as r:
                        doc = await r.json()
                    if doc["status"] != "running":
                        return str(doc["verdict"] or doc["status"])

            began = time.perf_counter()
            verdicts = await asyncio.gather(*(one(s) for s in services))
            took = time.perf_counter() - began
    finally:
        await server.stop()
    return took, collections.Counter(verdicts)


async def in_process(config: VigilConfig, services: list[str]) -> tuple[float, collections.Counter[str]]:
    began = time.perf_counter()
    verdicts = await asyncio.gather(*(verify(config, plan(parse_request(body(s)), config)) for s in services))
    return time.perf_counter() - began, collections.Counter(str(v.outcome) for v in verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-fail-fast", action="store_true", help="judge every run to its end")
    args = parser.parse_args()
    global FAIL_FAST
    FAIL_FAST = not args.no_fail_fast
    print(machine())
    runs = scenarios(args.runs - args.runs // 2, args.runs // 2)
    tmp = tempfile.TemporaryDirectory()
    text = generate(args.seed, runs, LADDER)
    with tmp, EmbeddedBroker() as broker, prometheus_with(text, Path(tmp.name)) as prometheus:
        config = configured(prometheus.url, broker.bootstrap_servers)
        api_s, api_verdicts = asyncio.run(through_api(config, list(runs)))
        bare_s, bare_verdicts = asyncio.run(in_process(config, list(runs)))
    how = "fail_fast on" if FAIL_FAST else "fail_fast off: every run judged to its end"
    print(f"{len(runs)} half-hour replays (121 steps, http pack, 3+3 pods, {how}) submitted together:")
    print(f"  through the API (embedded broker): all done in {api_s:.1f} s; verdicts {dict(api_verdicts)}")
    print(f"  in-process, no API or Kafka (baseline): {bare_s:.1f} s; verdicts {dict(bare_verdicts)}")
    print(f"  ratio API / in-process: {api_s / bare_s:.2f}; the issue's target: within 600 s")


if __name__ == "__main__":
    main()
