"""Prometheus metrics, defined once; names documented in docs/operations.md.

`relay serve` with delivery processes runs prometheus_client in multiprocess mode (the CLI sets
PROMETHEUS_MULTIPROC_DIR before anything imports it): every process writes its values to files
there, and /metrics adds them up, so the delivery children's counters are not lost. Gauges say
how their per-process values combine (``multiprocess_mode``).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

SMTP_CONNECTIONS = Gauge(
    "relay_smtp_connections", "Open SMTP connections", multiprocess_mode="livesum"
)
SMTP_SESSIONS = Counter("relay_smtp_sessions_total", "SMTP connections accepted", ["listener"])
SMTP_AUTH = Counter("relay_smtp_auth_total", "AUTH attempts", ["result"])
SMTP_REPLIES = Counter(
    "relay_smtp_rejections_total",
    "Rejected SMTP commands by stage and reply code",
    ["stage", "code"],
)
MESSAGES_ACCEPTED = Counter("relay_messages_accepted_total", "Messages queued (250 sent)")
RECIPIENTS_ACCEPTED = Counter("relay_recipients_accepted_total", "Recipients queued")
MESSAGE_BYTES = Histogram(
    "relay_message_size_bytes",
    "Size of accepted messages",
    buckets=(1e3, 4e3, 16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6),
)
QUEUE_COMMIT_SECONDS = Histogram(
    "relay_queue_commit_seconds",
    "Group-commit transaction duration",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
QUEUE_COMMIT_BATCH = Histogram(
    "relay_queue_commit_batch_messages",
    "Messages per group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
DKIM_SIGN_SECONDS = Histogram(
    "relay_dkim_sign_seconds",
    "DKIM signing time per message",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)
DELIVERY_RESULTS = Counter(
    "relay_delivery_results_total", "Per-recipient delivery outcomes", ["result"]
)
DELIVERY_SECONDS = Histogram(
    "relay_delivery_seconds",
    "Time to hand one message to a delivery server",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DELIVERY_IN_FLIGHT = Gauge(
    "relay_delivery_in_flight", "Messages being delivered now", multiprocess_mode="livesum"
)
QUEUE_DEPTH = Gauge(
    "relay_queue_pending_recipients", "Recipients queued or deferred", multiprocess_mode="livemax"
)
API_REQUESTS = Counter("relay_api_requests_total", "Admin API requests", ["command", "status"])
DELIVERY_CONNECTIONS = Counter(
    "relay_delivery_connections_total",
    "Connections to delivery servers: opened, or failed to open (error)",
    ["result"],
)
DELIVERY_POOL_OPEN = Gauge(
    "relay_delivery_pool_connections",
    "Open connections to delivery servers, busy or idle",
    multiprocess_mode="livesum",
)
DELIVERY_FAILOVERS = Counter(
    "relay_delivery_failovers_total",
    "Attempts moved to the next delivery server after a connection failure",
)
DELIVERY_SUPPRESSIONS = Counter(
    "relay_delivery_suppressions_total", "Recipients suppressed after a hard bounce"
)
DELIVERY_WORKER_UP = Gauge(
    "relay_delivery_worker_up",
    "Delivery workers running on this node (one per delivery process); 0 when none runs",
    multiprocess_mode="livesum",
)
RELAY_DOMAIN_CHECKS = Counter(
    "relay_relay_domain_checks_total",
    "inbound-relay-domain-check answers",
    ["result"],  # allowed | denied | auth_failed
)
DNS_LOOKUPS = Counter(
    "relay_dns_lookups_total",
    "DNS lookups made for domain verification (cache misses)",
    ["type", "status"],  # status: ok | nxdomain | nodata | error
)

MX_REPORTS = Counter(
    "relay_mx_reports_total",
    "Reports received by the MX listener, per return path, by what became of them",
    ["result"],  # bounced | deferred | complained | unsubscribed | duplicate | ignored |
    # unmatched | unparsed | error
)
MX_CONNECTIONS = Gauge(
    "relay_mx_connections", "Open connections to the MX listener", multiprocess_mode="livesum"
)
MX_REJECTIONS = Counter(
    "relay_mx_rejections_total",
    "Commands the MX listener refused, by stage and reply code",
    ["stage", "code"],
)


MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def render() -> tuple[bytes, str]:
    """The exposition of every process of this node, and its content type."""
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def process_gone(pid: int) -> None:
    """Drop a dead process's live gauges (multiprocess mode only)."""
    if os.environ.get(MULTIPROCESS_ENV):
        _multiprocess.mark_process_dead(pid)
