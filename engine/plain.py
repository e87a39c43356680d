"""Objects' state as plain data (numbers, strings, lists) and back, without pickle.

Used for the guards and detectors in checkpoints: their state is plain Python numbers held in slots.
:func:`dump` takes every slot (or ``__dict__`` entry) whose value is a plain number, string, bool or
``None``, lists of finite numbers as ``{"$list": [...]}``, and nested stateful objects (with slots or a
``__dict__``; not enums, dataclasses or containers) as ``{"$obj": ...}``;
values derived from configuration (enums, thresholds) are left out and come from the fresh object that
:func:`apply` fills. So an attribute added later (e.g. a watermark) is included without changing this.
"""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from typing import Any

__all__ = ["apply", "dump"]

_PLAIN = (int, float, str, bool, type(None))


def _attributes(obj: object) -> list[str]:
    names: list[str] = []
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    names.extend(getattr(obj, "__dict__", {}))
    names.extend(getattr(type(obj), "_plain_properties", ()))  # derived state a class exposes as lists
    return [n for n in dict.fromkeys(names) if not n.startswith("__")]


def _stateful(value: object) -> bool:
    return (
        (hasattr(type(value), "__slots__") or hasattr(value, "__dict__"))
        and not isinstance(value, Enum | type | list | dict | tuple | set)
        and not dataclasses.is_dataclass(value)
        and type(value) not in _PLAIN
    )


def _finite_number(value: object) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _floats(items: list[Any]) -> bool:
    return not items or type(items[0]) is float


def dump(obj: object) -> dict[str, Any]:
    """The plain state of ``obj``."""
    out: dict[str, Any] = {}
    for name in _attributes(obj):
        try:
            value = getattr(obj, name)
        except AttributeError:
            continue
        if type(value) in _PLAIN:
            out[name] = {"$f": str(value)} if type(value) is float and not math.isfinite(value) else value
        elif type(value) is list and all(_finite_number(v) for v in value):
            out[name] = {"$list": value}
        elif _stateful(value):
            out[name] = {"$obj": dump(value)}
    return out


def apply(obj: object, state: dict[str, Any]) -> None:
    """Set the attributes of (a fresh) ``obj`` from :func:`dump`'s output.

    Raises ``ValueError`` when a value does not fit the attribute it is for (another type than the fresh
    object's). Names the object does not have are ignored: state written by a newer version of a class.
    """
    for name, saved in state.items():
        try:
            current = getattr(obj, name)
        except AttributeError:
            continue
        if type(saved) is dict and "$obj" in saved:
            if not _stateful(current):
                raise ValueError(f"{type(obj).__name__}.{name} is not an object")
            apply(current, saved["$obj"])
            continue
        if type(saved) is dict and "$list" in saved:
            items = saved["$list"]
            if type(current) is not list or type(items) is not list or not all(map(_finite_number, items)):
                raise ValueError(f"{type(obj).__name__}.{name} is not a list of numbers")
            setattr(obj, name, [float(v) if type(v) is int and _floats(current) else v for v in items])
            continue
        if type(saved) is dict and "$f" in saved:
            saved = float(saved["$f"])
        if current is not None and saved is not None and type(current) is not type(saved):
            if type(current) is float and type(saved) is int:
                saved = float(saved)
            else:
                want, got = type(current).__name__, type(saved).__name__
                raise ValueError(f"{type(obj).__name__}.{name}: expected {want}, got {got}")
        setattr(obj, name, saved)
