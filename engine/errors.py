"""Vigil's error type: every error says whether trying again can help."""


class VigilError(Exception):
    """Base error. ``retriable`` tells callers (and HTTP status mapping) whether to resend."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class ConfigError(VigilError):
    """The configuration is wrong; the message names the file, the key path and what was expected."""


class BadRecord(VigilError):
    """A Kafka record (or part of one) that cannot be used; it goes to the dead-letter topic."""


class BrokerUnavailable(VigilError):
    """The broker did not answer in time. Retriable."""

    retriable = True
