"""Metric packs: built-in PromQL templates for common exporters, kept as YAML data beside this module.

A pack entry is ``{name, type, direction, query, instance_query}``, and for ratios also ``numerator`` and
``denominator`` (so errors can be judged as counts). ``query`` gives the service as a whole,
``instance_query`` the same per instance. Placeholders: ``{{service_label}}`` and ``{{instance_label}}``
(from ``labels.*``), ``{{service}}``, and ``{{selector}}`` — extra label matchers, each starting with a
comma (verification puts baseline or canary there; the poller leaves it empty).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Final, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.config import PLACEHOLDERS, Direction, MetricType, PackName
from engine.errors import ConfigError

PACKS: Final[tuple[str, ...]] = get_args(PackName)
__all__ = ["PACKS", "PLACEHOLDERS", "PackMetric", "load_pack", "render"]


class PackMetric(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    type: MetricType
    direction: Direction
    query: str
    instance_query: str
    numerator: str | None = None
    denominator: str | None = None

    def templates(self) -> dict[str, str]:
        found = {"query": self.query, "instance_query": self.instance_query}
        if self.numerator is not None and self.denominator is not None:
            found |= {"numerator": self.numerator, "denominator": self.denominator}
        return found


def render(
    template: str, *, service_label: str, service: str, instance_label: str, selector: str = ""
) -> str:
    """A template with its placeholders filled.

    >>> render('up{ {{service_label}}="{{service}}"{{selector}} }', service_label="job", service="a",
    ...        instance_label="instance", selector=',zone="x"')
    'up{ job="a",zone="x" }'
    """
    return (
        template.replace("{{service_label}}", service_label)
        .replace("{{service}}", service)
        .replace("{{selector}}", selector)
        .replace("{{instance_label}}", instance_label)
    )


@cache
def load_pack(name: str) -> tuple[PackMetric, ...]:
    """The entries of the built-in pack ``name``; :class:`ConfigError` for an unknown name."""
    if name not in PACKS:
        raise ConfigError(f"no metric pack {name!r:.60}; the packs are {', '.join(PACKS)}")
    text = resources.files(__package__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    try:
        return tuple(PackMetric(**entry) for entry in yaml.safe_load(text))
    except (ValidationError, TypeError) as exc:  # a broken file in the package: a bug, said plainly
        raise ConfigError(f"metric pack {name} is broken: {exc}") from None
