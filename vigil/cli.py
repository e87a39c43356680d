"""The ``vigil`` command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
import yaml

from engine.config import VigilConfig, load_config, redacted
from engine.errors import VigilError

app = typer.Typer(
    help="Vigil: streaming anomaly detection for Prometheus metrics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Work with configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML configuration file (default: built-in defaults).")
]
BootstrapOption = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers", help="Kafka to use (default: config, else the running embedded broker)."
    ),
]


def _load(path: Path | None) -> VigilConfig:
    try:
        return load_config(path)
    except VigilError as exc:
        typer.echo(f"vigil: configuration error\n{exc}", err=True)
        raise typer.Exit(2) from None


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"vigil: {exc}", err=True)
    return typer.Exit(2)


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run everything: embedded broker (unless kafka.bootstrap_servers is set), worker, receiver, poller,
    notifiers."""
    from vigil.supervisor import supervise

    cfg = _load(config)
    parts = [
        "worker",
        *(["ingest"] if cfg.receiver.enabled else []),
        *(["poller"] if cfg.poller.enabled else []),
        *(["api"] if cfg.api.enabled else []),
        *(["notify"] if cfg.notify else []),
    ]
    raise typer.Exit(supervise(config, cfg, parts))


@app.command()
def worker(
    config: ConfigOption = None,
    loglevel: Annotated[str, typer.Option(help="debug, info, warn or error")] = "warn",
) -> None:
    """Run one worker (Faust) against kafka.bootstrap_servers: judges samples, emits verdicts."""
    cfg = _load(config)
    if cfg.kafka.embedded:
        raise _fail(VigilError("`vigil worker` needs kafka.bootstrap_servers; `vigil run` starts a broker"))
    from engine.app import run_worker

    sys.argv = [sys.argv[0]]  # Faust's worker parses argv itself
    try:
        run_worker(cfg, loglevel=loglevel)
    except VigilError as exc:
        raise _fail(exc) from None


@app.command()
def ingest(
    config: ConfigOption = None,
    loglevel: Annotated[str, typer.Option(help="debug, info, warn or error")] = "warn",
) -> None:
    """Run the remote-write receiver against kafka.bootstrap_servers until SIGINT/SIGTERM."""
    cfg = _load(config)
    if cfg.kafka.embedded:
        raise _fail(VigilError("`vigil ingest` needs kafka.bootstrap_servers; `vigil run` starts a broker"))
    from connectors.receiver import run_ingest

    logging.getLogger().setLevel(loglevel.upper())
    try:
        run_ingest(cfg)
    except VigilError as exc:
        raise _fail(exc) from None


@app.command()
def poller(
    config: ConfigOption = None,
    loglevel: Annotated[str, typer.Option(help="debug, info, warn or error")] = "warn",
) -> None:
    """Run the PromQL poller against kafka.bootstrap_servers until SIGINT/SIGTERM."""
    cfg = _load(config)
    if cfg.kafka.embedded:
        raise _fail(VigilError("`vigil poller` needs kafka.bootstrap_servers; `vigil run` starts a broker"))
    from connectors.poller import run_poller

    logging.getLogger().setLevel(loglevel.upper())
    try:
        run_poller(cfg)
    except VigilError as exc:
        # exit 2 is a configuration error, which `vigil run` does not restart; Kafka being away is not one
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(1 if exc.retriable else 2) from None


@app.command()
def notify(
    config: ConfigOption = None,
    loglevel: Annotated[str, typer.Option(help="debug, info, warn or error")] = "warn",
) -> None:
    """Run the configured notifiers (section notify) against kafka.bootstrap_servers until SIGINT/SIGTERM."""
    cfg = _load(config)
    if cfg.kafka.embedded:
        raise _fail(VigilError("`vigil notify` needs kafka.bootstrap_servers; `vigil run` starts a broker"))
    from connectors.notify import run_notify

    logging.getLogger().setLevel(loglevel.upper())
    try:
        run_notify(cfg)
    except VigilError as exc:
        # exit 2 is a configuration error, which `vigil run` does not restart; Kafka being away is not one
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(1 if exc.retriable else 2) from None


@app.command()
def api(
    config: ConfigOption = None,
    loglevel: Annotated[str, typer.Option(help="debug, info, warn or error")] = "warn",
) -> None:
    """Run the HTTP API (verifications) against kafka.bootstrap_servers until SIGINT/SIGTERM."""
    cfg = _load(config)
    if cfg.kafka.embedded:
        raise _fail(VigilError("`vigil api` needs kafka.bootstrap_servers; `vigil run` starts a broker"))
    from connectors.api import run_api

    logging.getLogger().setLevel(loglevel.upper())
    try:
        run_api(cfg)
    except VigilError as exc:
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(1 if exc.retriable else 2) from None


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(help="CSV file with timestamp,value rows")],
    service: Annotated[str, typer.Option(help="service of the series")],
    metric: Annotated[str, typer.Option(help="metric name of the series")],
    instance: Annotated[str, typer.Option(help="instance of the series")] = "",
    speed: Annotated[
        float, typer.Option(help="pace at this multiple of real time; 0 = as fast as possible")
    ] = 0.0,
    config: ConfigOption = None,
    bootstrap_servers: BootstrapOption = None,
) -> None:
    """Push a timestamp,value CSV through the running pipeline."""
    from connectors.csv_source import read_points
    from connectors.replay import replay as produce
    from vigil.runtime import resolve_bootstrap, with_kafka

    cfg = _load(config)
    if speed < 0:
        raise _fail(VigilError("--speed must be 0 (no pacing) or positive"))
    try:
        points = read_points(file)
        live = with_kafka(cfg, resolve_bootstrap(cfg, bootstrap_servers))
        sent = asyncio.run(
            produce(live.kafka, points, service=service, metric=metric, instance=instance, speed=speed)
        )
    except VigilError as exc:
        raise _fail(exc) from None
    typer.echo(f"replayed {sent} points of {service}/{metric} to {live.kafka.topics.samples}")


@app.command()
def backtest(
    data: Annotated[Path, typer.Option("--data", help="folder of timestamp,value CSV files (searched deep)")],
    labels: Annotated[Path, typer.Option("--labels", help="NAB-style combined_windows.json")],
    out: Annotated[Path, typer.Option("--out", help="folder for the results (created if missing)")],
    config: ConfigOption = None,
) -> None:
    """Run the configured detection over every CSV under --data as the worker would, write per-row scores
    and alarms under --out, and print NAB's scores (threshold-optimised and as alarmed)."""
    from vigil.backtest import run_backtest

    cfg = _load(config)
    try:
        run_backtest(cfg, data, labels, out)
    except VigilError as exc:
        raise _fail(exc) from None


@app.command()
def tail(
    json: Annotated[bool, typer.Option("--json", help="one JSON event per line")] = False,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="start at the oldest event")
    ] = False,
    config: ConfigOption = None,
    bootstrap_servers: BootstrapOption = None,
) -> None:
    """Follow vigil.verdicts and print each event."""
    from connectors.kafka import follow
    from vigil.runtime import resolve_bootstrap, with_kafka
    from vigil.tail import describe

    cfg = _load(config)
    try:
        live = with_kafka(cfg, resolve_bootstrap(cfg, bootstrap_servers))
    except VigilError as exc:
        raise _fail(exc) from None

    async def loop() -> None:
        async for raw in follow(live.kafka, live.kafka.topics.verdicts, from_beginning=from_beginning):
            if json:
                sys.stdout.write(raw.decode("utf-8", "replace") + "\n")
            else:
                try:
                    sys.stdout.write(describe(orjson.loads(raw)) + "\n")
                except (orjson.JSONDecodeError, AttributeError):
                    sys.stdout.write(f"(not an event) {raw[:200]!r}\n")
            sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(loop())


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="how long to run")] = 60.0,
    config: ConfigOption = None,
) -> None:
    """Stream synthetic metrics with injected incidents through the real pipeline and show the verdicts."""
    from vigil.demo import run_demo

    cfg = _load(config)
    if seconds <= 0:
        raise _fail(VigilError("--seconds must be positive"))
    raise typer.Exit(run_demo(config, cfg, seconds))


@app.command()
def poll(
    once: Annotated[bool, typer.Option("--once", help="poll each watch once and exit (required)")] = False,
    config: ConfigOption = None,
    watch: Annotated[str | None, typer.Option("--watch", help="only this watch")] = None,
    start: Annotated[
        str | None, typer.Option(help="RFC 3339 start (with --end); default: lookback_s")
    ] = None,
    end: Annotated[str | None, typer.Option(help="RFC 3339 end, inclusive; default: now - delay_s")] = None,
    json: Annotated[bool, typer.Option("--json", help="only JSON lines on stdout")] = False,
) -> None:
    """Print what one poll of the configured watches emits, without Kafka (exit 1 if a query failed)."""
    from vigil.poll import parse_time, poll_once

    cfg = _load(config)
    if not once:
        raise _fail(VigilError("vigil poll needs --once (the streaming poller is not built yet)"))
    try:
        start_ms = None if start is None else parse_time(start, "--start")
        end_ms = None if end is None else parse_time(end, "--end")
        status = asyncio.run(poll_once(cfg, watch, start_ms, end_ms, as_json=json))
    except VigilError as exc:
        raise _fail(exc) from None
    raise typer.Exit(status)


@app.command()
def verify(
    service: Annotated[str, typer.Option(help="the service (value of labels.service)")],
    baseline: Annotated[
        str | None, typer.Option(help='canary: label matchers of the baseline, e.g. version="v41"')
    ] = None,
    canary: Annotated[
        str | None, typer.Option(help='canary: label matchers of the canary, e.g. version="v42"')
    ] = None,
    config: ConfigOption = None,
    kind: Annotated[str, typer.Option("--type", help="canary, before_after or load_test")] = "canary",
    selector: Annotated[
        str | None, typer.Option(help="before_after, load_test: label matchers of the service's series")
    ] = None,
    deployed_at: Annotated[
        str | None, typer.Option(help="before_after: RFC 3339 time of the deploy (default: --start or now)")
    ] = None,
    baseline_start: Annotated[
        str | None, typer.Option(help="load_test: RFC 3339 start of the earlier run's window")
    ] = None,
    baseline_run: Annotated[
        str | None, typer.Option(help="load_test with --api: id or key of the earlier verification")
    ] = None,
    ml_history: Annotated[
        str | None,
        typer.Option(help="canary: the ML view also learns the baseline this long before --start (e.g. 50m)"),
    ] = None,
    pack: Annotated[list[str] | None, typer.Option(help="a metric pack (repeatable)")] = None,
    metric: Annotated[
        list[str] | None, typer.Option(help="NAME=QUERY with {{selector}} (repeatable)")
    ] = None,
    start: Annotated[str | None, typer.Option(help="RFC 3339 start of a past window to replay")] = None,
    end: Annotated[str | None, typer.Option(help="RFC 3339 end of the window (with --start)")] = None,
    duration: Annotated[str | None, typer.Option(help="live: judge for this long, e.g. 30m")] = None,
    step: Annotated[str, typer.Option(help="step between looks")] = "15s",
    source: Annotated[str | None, typer.Option(help="poller source (default: the first)")] = None,
    instance_label: Annotated[str | None, typer.Option(help="default: labels.instance")] = None,
    sensitivity: Annotated[str, typer.Option(help="low, medium or high")] = "medium",
    no_fail_fast: Annotated[
        bool, typer.Option("--no-fail-fast", help="judge the whole window even after a fail")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="print the verdict document as JSON")] = False,
    api_url: Annotated[
        str | None,
        typer.Option("--api", help="submit to a running Vigil API (token from $VIGIL_API_TOKEN)"),
    ] = None,
) -> None:
    """Judge a canary against its baseline (or a deploy against before it, a load test against an earlier
    run): exit 0 pass, 1 fail, 3 inconclusive, 2 bad input."""
    import os

    from connectors.prometheus import QueryError
    from vigil.verify import parse_metric, run_remote, run_verify

    cfg = _load(config)
    try:
        doc: dict[str, object] = {
            "service": service,
            "type": kind,
            "pack": pack or [],
            "metrics": [parse_metric(m) for m in metric or []],
            "step": step,
            "sensitivity": sensitivity,
            "fail_fast": not no_fail_fast,
        }
        optional = {
            "start": start,
            "end": end,
            "duration": duration,
            "source": source,
            "baseline": baseline,
            "canary": canary,
            "selector": selector,
            "deployed_at": deployed_at,
            "baseline_start": baseline_start,
            "baseline_run": baseline_run,
            "ml_history": ml_history,
        }
        doc |= {k: v for k, v in optional.items() if v is not None}
        if instance_label is not None:
            doc["instance_label"] = instance_label
        if api_url is not None:
            token = os.environ.get("VIGIL_API_TOKEN")
            status = asyncio.run(run_remote(api_url, doc, as_json=json, token=token))
        else:
            status = asyncio.run(run_verify(cfg, doc, as_json=json))
    except QueryError as exc:
        raise _fail(VigilError(f"query {exc.kind}: {exc}")) from None
    except VigilError as exc:
        raise _fail(exc) from None
    raise typer.Exit(status)


@config_app.command("check")
def config_check(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML configuration file")],
) -> None:
    """Validate a configuration file and print the effective configuration (secrets masked)."""
    cfg = _load(config)
    typer.echo(f"# {config}: valid")
    typer.echo(yaml.safe_dump(redacted(cfg), sort_keys=False), nl=False)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app()
