"""The streaming PromQL poller (see :mod:`connectors.poller.service`)."""

from connectors.poller.service import Poller, run_poller, serve

__all__ = ["Poller", "run_poller", "serve"]
