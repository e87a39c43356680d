"""Notifiers: anomaly events from ``vigil.verdicts`` to Alertmanager, webhooks, Slack and PagerDuty."""

from connectors.notify.service import Notifier, run_notify, serve

__all__ = ["Notifier", "run_notify", "serve"]
