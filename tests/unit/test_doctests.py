"""The examples in the docstrings of Vigil's own modules hold (each module's doctests, as one test)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import connectors
import engine
import vigil


def _modules() -> list[str]:
    names = [
        info.name
        for package in (engine, connectors, vigil)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
    ]
    return sorted(n for n in names if not n.endswith("__main__"))  # importing it would run the CLI


@pytest.mark.parametrize("name", _modules())
def test_the_docstring_examples_of_a_module_hold(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see above)"
