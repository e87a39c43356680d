"""The notifier process' Prometheus metrics (a registry of its own, no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector


class NotifyStats:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter(
            "vigil_notify_events",
            "Anomaly events handled, by notifier and outcome: delivered, filtered (not for this notifier), "
            "below_min_health (an opening and its resolution while the service stayed below min_health), "
            "refused (the receiver answered a 4xx that a resend cannot fix; dropped, logged).",
            ["notifier", "outcome"],
            registry=r,
        )
        self.skipped = Counter(
            "vigil_notify_records_skipped",
            "Records of the verdicts topic that were not anomaly events, by reason "
            "(oversized, not_json, wrong_shape, other_type).",
            ["notifier", "reason"],
            registry=r,
        )
        self.requests = Counter(
            "vigil_notify_requests",
            'Requests sent to a receiver, by HTTP status ("error": no answer).',
            ["notifier", "status"],
            registry=r,
        )
        self.retries = Counter(
            "vigil_notify_retries", "Requests that failed and are sent again later.", ["notifier"], registry=r
        )
        self.pending = Gauge(
            "vigil_notify_pending_events",
            "Events read but not delivered yet (waiting for their group's interval, or for a retry).",
            ["notifier"],
            registry=r,
        )
        self.open_alerts = Gauge(
            "vigil_notify_open_alerts",
            "Alertmanager notifiers: open anomalies whose alert is kept alive by re-sending.",
            ["notifier"],
            registry=r,
        )
        self.held = Gauge(
            "vigil_notify_held_events",
            "Notifiers with min_health: openings waiting for their service's health to reach it.",
            ["notifier"],
            registry=r,
        )
        self.last_delivery = Gauge(
            "vigil_notify_last_delivery_timestamp_seconds",
            "Wall-clock time of the last delivered request (0: none yet).",
            ["notifier"],
            registry=r,
        )
        ProcessCollector(registry=r)
