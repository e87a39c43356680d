"""The ``notify`` section: a list of notifiers, secrets from files or the environment only."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import NotifierType, load_config
from engine.errors import ConfigError


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "vigil.yaml"
    path.write_text(text)
    return load_config(path)


def test_the_issue_example_is_valid(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
notify:
  - {name: am, type: alertmanager, url: "http://127.0.0.1:9093"}
  - {name: hook, type: webhook, url: "https://example.internal/vigil", secret_file: /etc/vigil/hook-secret}
  - {name: chat, type: slack, webhook_url_file: /etc/vigil/slack-url, services: [checkout]}
  - {name: pager, type: pagerduty, routing_key_env: PD_KEY, metric_types: [errors, latency],
     min_health: unhealthy}
notifier: {metrics_port: 0}
api: {external_url: "https://vigil.example.com/ui"}
""",
    )
    assert [n.type for n in config.notify] == list(NotifierType)
    assert config.notify[3].endpoint == "https://events.pagerduty.com/v2/enqueue"
    assert config.notify[2].services == ("checkout",)
    assert config.notify[3].min_health == "unhealthy"
    assert config.notify[0].min_health is None
    assert config.notifier.metrics_port == 0
    assert config.api.external_url == "https://vigil.example.com/ui"


@pytest.mark.parametrize(
    ("notifier", "expected"),
    [
        ("{name: a, type: slack}", "slack notifiers need webhook_url_file or webhook_url_env"),
        ("{name: a, type: pagerduty}", "need routing_key_file or routing_key_env"),
        ("{name: a, type: alertmanager}", "alertmanager notifiers need url"),
        ("{name: a, type: email, url: 'http://x'}", "notify.0.type: Input should be 'alertmanager'"),
        ("{name: a, type: alertmanager, url: 'ftp://x'}", "url must be http://host"),
        ("{name: a, type: alertmanager, url: 'http://x', secret_file: /s}", "do not take secret_file"),
        ("{name: a, type: slack, webhook_url_file: /a, webhook_url_env: B}", "not both"),
        (
            "{name: a, type: webhook, url: 'http://x', min_health: healthy}",
            "notify.0.min_health: Input should",
        ),
        ("{name: a, type: webhook, url: 'http://x', min_health: [unhealthy]}", "notify.0.min_health"),
        ("{name: 'a b', type: webhook, url: 'http://x'}", "notify.0.name: String should match"),
        ("{name: a, type: webhook, url: 'http://x', events: [flapped]}", "notify.0.events.0"),
        ("{name: a, type: webhook, url: 'http://x', metric_types: [bogus]}", "notify.0.metric_types.0"),
        ("{name: a, type: webhook, url: 'http://x', bogus: 1}", "notify.0.bogus: Extra inputs"),
        (
            "{name: a, type: alertmanager, url: 'http://x', expiry_s: 30, resend_interval_s: 60}",
            "expiry_s must exceed resend_interval_s",
        ),
    ],
)
def test_bad_notifiers_are_refused_clearly(tmp_path: Path, notifier: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"vigil\.yaml") as info:
        load(tmp_path, f"notify:\n  - {notifier}\n")
    assert expected in str(info.value)


def test_names_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="notifier names must be unique"):
        load(
            tmp_path,
            "notify:\n  - {name: a, type: webhook, url: 'http://x'}\n"
            "  - {name: a, type: alertmanager, url: 'http://y'}\n",
        )


@pytest.mark.parametrize(
    "notifier",
    [
        "{name: a, type: slack, webhook_url: 'https://hooks.slack.com/services/T0/B0/SECRETXYZ'}",
        "{name: a, type: pagerduty, routing_key: SECRETXYZ}",
        "{name: a, type: webhook, url: 'http://x', secret: SECRETXYZ}",
        "{name: a, type: webhook, url: 'http://user:SECRETXYZ@x/'}",
        "{name: a, type: webhook, url: 'gopher://SECRETXYZ'}",
        "{name: a, type: webhook, url: 'http://x', secret_filee: SECRETXYZ}",
    ],
)
def test_secrets_given_inline_are_refused_without_being_echoed(tmp_path: Path, notifier: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"notify:\n  - {notifier}\n")
    assert "SECRETXYZ" not in str(info.value)


@pytest.mark.parametrize(
    "url", ["http://x/?token=1", "https://user@host", "https://", "http:/x", "javascript:alert(1)"]
)
def test_external_url_must_be_a_plain_http_url(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"api\.external_url"):
        load(tmp_path, f"api: {{external_url: '{url}'}}\n")
