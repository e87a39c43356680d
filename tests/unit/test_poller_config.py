"""The ``poller:`` section: sources (and their secrets) and watches, with clear errors and no secret
ever echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config, redacted
from engine.errors import ConfigError


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "vigil.yaml"
    path.write_text(text)
    return load_config(path)


def failure(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return str(caught.value)


SOURCE = "poller:\n  sources:\n    - name: main\n"


def test_a_source_needs_only_name_and_url(tmp_path: Path) -> None:
    config = load_config(None)
    assert config.poller.sources == ()
    loaded = load(tmp_path, SOURCE + "      url: http://127.0.0.1:9090/\n")
    (source,) = loaded.poller.sources  # type: ignore[attr-defined]
    assert source.base_url == "http://127.0.0.1:9090"
    assert (source.timeout_s, source.max_concurrency, source.retries) == (30.0, 4, 5)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("      url: ftp://h\n", "url must be http://"),
        ("      url: http://\n", "url must be http://"),
        ("      url: http://h/?x=1\n", "query string"),
        ("      url: http://h\n      timeout_s: 0\n", "timeout_s: Input should be greater than 0"),
        ("      url: http://h\n      max_concurrency: 0\n", "max_concurrency"),
        ("      url: http://h\n      tls: {cert_file: /c.pem}\n", "both cert_file and key_file"),
        ("      url: http://h\n      basic_username: u\n", "needs both basic_username and basic_password"),
        (
            "      url: http://h\n      bearer_token: a\n      bearer_token_file: /t\n",
            "one way only, not bearer_token and bearer_token_file",
        ),
        (
            "      url: http://h\n      bearer_token: a\n      basic_username: u\n      basic_password: p\n",
            "not both",
        ),
        (
            "      url: http://h\n      bearer_token: a\n      headers: {Authorization: x}\n",
            "Authorization header",
        ),
    ],
)
def test_bad_sources_are_refused_clearly(tmp_path: Path, extra: str, expected: str) -> None:
    assert expected in failure(tmp_path, SOURCE + extra)


@pytest.mark.parametrize(
    "extra",
    [
        "      url: http://admin:hunter2-secret@h:9090\n",
        "      url: http://h\n      bearer_token: [hunter2-secret]\n",
        "      url: http://h\n      headers: {X-Key: [hunter2-secret]}\n",
        "      url: http://h\n      basic_username: u\n      basic_password: {a: hunter2-secret}\n",
        "      url: http://h\n      bearer_tokn: hunter2-secret\n",
    ],
)
def test_errors_never_echo_a_secret(tmp_path: Path, extra: str) -> None:
    message = failure(tmp_path, SOURCE + extra)
    assert "poller.sources.0" in message
    assert "hunter2" not in message


def test_config_check_masks_secrets(tmp_path: Path) -> None:
    text = (
        SOURCE
        + "      url: http://h\n      bearer_token: hunter2-secret\n      headers: {X-Scope-OrgID: t1}\n"
    )
    shown = str(redacted(load(tmp_path, text)))  # type: ignore[arg-type]
    assert "hunter2" not in shown
    assert "t1" not in shown


WATCH = """poller:
  sources:
    - {name: main, url: "http://127.0.0.1:9090"}
    - {name: other, url: "http://127.0.0.1:9091"}
  watches:
    - name: checkout
"""
QUERY = (
    "      queries:\n"
    "        - name: error_ratio\n"
    "          query: 'sum by ({{instance_label}}) (up{{{service_label}}=\"{{service}}\"})'\n"
)


def test_a_watch_with_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, WATCH + "      service: checkout\n" + QUERY)
    poller = config.poller  # type: ignore[attr-defined]
    (watch,) = poller.watches
    assert (watch.step_s, watch.interval_s, watch.lookback_s, watch.delay_s) == (15, 15.0, 3600, 30)
    assert poller.source_of(watch).name == "main"
    rendered = watch.render(watch.queries[0], config.labels)  # type: ignore[attr-defined]
    assert rendered == 'sum by (instance) (up{job="checkout"})'


def test_a_watch_names_its_source(tmp_path: Path) -> None:
    config = load(tmp_path, WATCH + "      service: checkout\n      source: other\n" + QUERY)
    poller = config.poller  # type: ignore[attr-defined]
    assert poller.source_of(poller.watches[0]).name == "other"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("      service: c\n      source: nope\n" + QUERY, "no source named 'nope'"),
        ("      service: c\n", "a pack or at least one query"),
        (QUERY, "a watch needs a service or a selector (one of them)"),
        ("      service: c\n      selector: '{a=\"b\"}'\n" + QUERY, "a service or a selector (one of them)"),
        ("      selector: 'a=\"b\"'\n" + QUERY, "selector: String should match pattern"),
        ("      selector: '{ }'\n" + QUERY, "selector: String should match pattern"),
        (
            "      selector: '{a=\"b\"}'\n      queries: [{name: a, query: up}]\n",
            "needs {{service}}; not in ['a']",
        ),
        ("      service: c\n      pack: [nope]\n", "pack.0: Input should be 'http', 'grpc'"),
        ("      service: c\n      pack: [http, http]\n", "a pack is named twice"),
        (
            "      service: c\n      pack: [http]\n      queries: [{name: http_error_ratio, query: up}]\n",
            "twice: ['http_error_ratio']",
        ),
        ("      service: c\n      step_s: 0\n" + QUERY, "step_s: Input should be greater than or equal to 1"),
        ("      service: c\n      interval_s: -1\n" + QUERY, "interval_s"),
        ("      service: c\n      lookback_s: x\n" + QUERY, "lookback_s: Input should be a valid integer"),
        ("      service: c\n      queries: [{name: 'a b', query: up}]\n", "queries.0.name"),
        ("      service: c\n      queries: [{name: a, query: ''}]\n", "queries.0.query"),
        ("      service: c\n      queries: [{name: a, query: up}, {name: a, query: up}]\n", "unique"),
        ("      service: c\n      queries: [{name: a, query: up, extra: 1}]\n", "extra: Extra inputs"),
        (
            "      service: c\n"
            + QUERY
            + "    - {name: checkout, service: d, queries: [{name: a, query: up}]}\n",
            "watch names must be unique",
        ),
    ],
)
def test_bad_watches_are_refused_clearly(tmp_path: Path, extra: str, expected: str) -> None:
    assert expected in failure(tmp_path, WATCH + extra)


def test_watches_need_a_source(tmp_path: Path) -> None:
    text = "poller:\n  watches:\n    - {name: w, service: s, queries: [{name: a, query: up}]}\n"
    assert "watches need a source" in failure(tmp_path, text)


def test_the_commented_example_in_the_shipped_config_is_valid(tmp_path: Path) -> None:
    shipped = (Path(__file__).resolve().parents[2] / "config" / "vigil.yaml").read_text()
    section: list[str] = []
    for line in shipped[shipped.index("\npoller:") + 1 :].splitlines():
        if section and line and not line.startswith((" ", "#")):
            break  # the next top-level section
        section.append(line)
    lines = [
        line.replace("  #  ", "  ", 1) if line.startswith("  #  ") else line.replace(": []", ":", 1)
        for line in section
    ]
    config = load(tmp_path, "\n".join(lines) + "\n")
    poller = config.poller  # type: ignore[attr-defined]
    assert [s.name for s in poller.sources] == ["main"]
    assert [(w.name, w.service, w.pack, [q.name for q in w.queries]) for w in poller.watches] == [
        ("checkout", "checkout", ("http", "process"), ["error_ratio"])
    ]


def test_a_pack_brings_its_queries_types_and_directions(tmp_path: Path) -> None:
    config = load(tmp_path, WATCH + "      service: checkout\n      pack: [http, process]\n" + QUERY)
    watch = config.poller.watches[0]  # type: ignore[attr-defined]
    names = [q.name for q in watch.all_queries]
    assert names[:3] == ["error_ratio", "http_request_rate", "http_error_ratio"]
    assert "process_restarts" in names
    rendered = watch.render(watch.all_queries[2], config.labels)  # type: ignore[attr-defined]
    assert rendered.startswith(
        'sum by (instance) (rate(http_requests_total{ job="checkout",code=~"5.." }[1m]))'
    )
    assert "{{" not in rendered
    rule = config.rule_for("process_memory_bytes")  # type: ignore[attr-defined]
    assert (rule.type, rule.direction) == ("saturation", "higher")
    assert config.rule_for("http_request_rate").direction == "both"  # type: ignore[attr-defined]


def test_a_selector_watch_fills_the_selector_per_service(tmp_path: Path) -> None:
    text = WATCH + '      selector: \'{namespace="shop", env="prod"}\'\n      pack: [http]\n' + QUERY
    config = load(tmp_path, text)
    watch = config.poller.watches[0]  # type: ignore[attr-defined]
    assert (watch.label, watch.matchers) == ("checkout", ',namespace="shop", env="prod"')
    cart = watch.for_service("cart")
    assert cart.label == "checkout/cart"
    rate = next(q for q in cart.all_queries if q.name == "http_request_rate")
    assert cart.render(rate, config.labels) == (  # type: ignore[attr-defined]
        'sum by (instance) (rate(http_requests_total{ job="cart",namespace="shop", env="prod" }[1m]))'
    )


def test_the_heartbeat_must_be_below_the_session_timeout(tmp_path: Path) -> None:
    text = "poller:\n  session_timeout_s: 6\n  heartbeat_interval_s: 6\n"
    assert "heartbeat_interval_s (6) must be below session_timeout_s (6)" in failure(tmp_path, text)
