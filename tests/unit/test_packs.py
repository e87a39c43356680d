"""The built-in metric packs: well-formed data, known placeholders only, unique names."""

from __future__ import annotations

import doctest
import re

import pytest

import engine.packs
from engine.errors import ConfigError
from engine.packs import PACKS, PLACEHOLDERS, load_pack

ALL = [(pack, m) for pack in PACKS for m in load_pack(pack)]


def test_every_pack_has_metrics_with_unique_names() -> None:
    assert PACKS == ("http", "grpc", "process", "node", "kubernetes")
    names = [m.name for _, m in ALL]
    assert len(names) == len(set(names))
    assert all(load_pack(p) for p in PACKS)


@pytest.mark.parametrize(("pack", "metric"), ALL, ids=[m.name for _, m in ALL])
def test_templates_use_known_placeholders_and_balance(pack: str, metric: engine.packs.PackMetric) -> None:
    for what, template in metric.templates().items():
        used = set(re.findall(r"\{\{[^}]*\}\}", template))
        assert used <= set(PLACEHOLDERS), (what, used)
        assert "{{service}}" in used, what  # every query is about one service
        assert template.count("(") == template.count(")"), what
    assert "{{instance_label}}" in metric.instance_query
    assert "{{instance_label}}" not in metric.query
    if "ratio" in metric.name:
        assert metric.numerator is not None
        assert metric.denominator is not None
    assert (metric.numerator is None) == (metric.denominator is None)


def test_an_unknown_pack_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no metric pack 'nope'; the packs are http, grpc"):
        load_pack("nope")


def test_doctests() -> None:
    assert doctest.testmod(engine.packs).failed == 0
