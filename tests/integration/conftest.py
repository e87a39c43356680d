"""Integration tests start many workers, often at once and beside other test runs on the same machine: let
each worker's metrics take any free port (tests that need the port read it from the worker's output)."""

from __future__ import annotations

import os

os.environ.setdefault("VIGIL_WORKER__METRICS_PORT", "0")
