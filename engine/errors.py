"""Vigil's error type: every error says whether trying again can help."""

from __future__ import annotations

from typing import Any


class VigilError(Exception):
    """Base error. ``retriable`` tells callers (and HTTP status mapping) whether to resend."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class ConfigError(VigilError):
    """The configuration is wrong; the message names the file, the key path and what was expected."""


def first_error(exc: Any, what: str) -> ConfigError:
    """A pydantic ``ValidationError`` as a :class:`ConfigError` naming its first field (``what`` when it
    is about the whole document) and what was wrong with it."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or what
    return ConfigError(f"{where}: {first['msg']}")


class BadRecord(VigilError):
    """A Kafka record (or part of one) that cannot be used; it goes to the dead-letter topic."""


class BrokerUnavailable(VigilError):
    """The broker did not answer in time. Retriable."""

    retriable = True
