"""The shipped Grafana dashboard and Prometheus alerting rules: valid for promtool, and every metric they
use is one Vigil exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connectors.metrics import SeriesCollector
from engine.config import MetricType
from engine.guard import SeriesState
from engine.health import Health
from engine.status import SeriesStatus

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "vigil-rules.yml"
DASHBOARD = ROOT / "config" / "grafana" / "vigil-service.json"


def promtool(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def exposed() -> set[str]:
    """Metric names of the API's series exposition (one series with both sides of the band)."""
    s = SeriesStatus("a", "m", "i", MetricType.CUSTOM, SeriesState.NORMAL, 0.5, 1.0, 0.0, 2.0, 0, 0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SeriesCollector(lambda: [s], lambda: {"a": Health.HEALTHY}))
    families = text_string_to_metric_families(generate_latest(registry).decode())
    return {sample.name for family in families for sample in family.samples}


def names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bvigil_[a-z_]+\b", expr))


def test_the_alerting_rules_pass_promtool_and_alert_on_the_normalised_score(tmp_path: Path) -> None:
    result = promtool(RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert any(r["expr"].strip() == "vigil_anomaly_score >= 1" for r in rules)
    for rule in rules:
        assert names_in(rule["expr"]) <= exposed(), rule["expr"]
    broken = tmp_path / "broken.yml"  # the check is real: promtool refuses a broken expression
    broken.write_text(RULES.read_text().replace("vigil_anomaly_score >= 1", "vigil_anomaly_score >= ("))
    assert promtool(broken).returncode != 0


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in doc["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_the_dashboard_is_templated_on_service_metric_instance_and_its_queries_are_valid_promql(
    tmp_path: Path,
) -> None:
    doc = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert {"datasource", "service", "metric", "instance"} <= set(variables)
    exprs = [t["expr"] for p in panels(doc) for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in variables.values() if isinstance(v.get("query"), dict)]
    joined = " ".join(exprs)
    for name in ("vigil_series_value", "vigil_expected_lower", "vigil_expected_upper", "vigil_anomaly_score"):
        assert name in joined
    assert "vigil_service_health" in joined
    for expr in exprs:
        assert names_in(expr) <= exposed(), expr
        for used in re.findall(r"\$\{?(\w+)", expr):
            assert used in variables, f"{expr}: ${used} is not a dashboard variable"
    # Every panel query is PromQL promtool accepts once the variables are filled in (label_values() is
    # Grafana's own: its argument is checked instead).
    queries = [re.sub(r"^label_values\((.*), \w+\)$", r"\1", e) for e in exprs]
    filled = [
        q.replace("$service", "checkout").replace("$metric", ".*").replace("$instance", ".*") for q in queries
    ]
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"x:q{i}", "expr": q} for i, q in enumerate(filled)]}
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool(path)
    assert result.returncode == 0, result.stdout + result.stderr
    for p in panels(doc):
        assert p["datasource"]["uid"] == "${datasource}"
