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
    "relay_queue_pending_recipients",
    "Recipients queued or deferred (scheduled ones not counted)",
    multiprocess_mode="livemax",
)
QUEUE_SCHEDULED = Gauge(
    "relay_queue_scheduled_recipients",
    "Recipients of scheduled messages, not yet due",
    multiprocess_mode="livemax",
)
QUEUE_HELD = Gauge(
    "relay_queue_held_recipients",
    "Recipients on hold (relay queue hold), not delivered until released",
    multiprocess_mode="livemax",
)
STORAGE_ERRORS = Counter(
    "relay_queue_storage_errors_total",
    "Queue operations that failed on storage and were retried or reported (claim, load, "
    "renew, release, depth, next_scheduled, or the group-commit writer's name)",
    ["operation"],
)
API_REQUESTS = Counter(
    "relay_api_requests_total", "Admin API requests", ["command", "status", "error_code"]
)
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
WEBHOOK_ATTEMPTS = Counter(
    "relay_webhook_attempts_total",
    "Webhook POST attempts by result",
    ["result"],  # delivered | http_error | timeout | connection_error | dns_error | refused
    # | internal_error
)
WEBHOOK_DELIVERIES = Counter(
    "relay_webhook_deliveries_total",
    "Webhook deliveries finished, by outcome",
    ["outcome"],  # delivered | given_up
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "relay_webhook_attempt_seconds",
    "Duration of one webhook POST attempt, answer read included",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEBHOOK_BACKLOG = Gauge(
    "relay_webhook_backlog",
    "Webhook deliveries not yet delivered nor given up (the whole outbox; counted up to 1e6)",
    multiprocess_mode="livemax",
)
WEBHOOK_OLDEST_SECONDS = Gauge(
    "relay_webhook_oldest_seconds",
    "Age of the oldest webhook delivery not yet delivered nor given up",
    multiprocess_mode="livemax",
)
WEBHOOK_IN_FLIGHT = Gauge(
    "relay_webhook_in_flight", "Webhook POSTs in flight now", multiprocess_mode="livesum"
)

# Set by the main process's storage probe (relay.health); the other processes leave them at 0,
# so "livemax" is the main process's value.
STORAGE_UP = Gauge(
    "relay_storage_up",
    "1 when the last storage probe could write (and, on SQLite, found room for a message)",
    multiprocess_mode="livemax",
)
STORAGE_PROBE_FAILURES = Counter(
    "relay_storage_probe_failures_total",
    "Storage probes that failed, by check",
    ["check"],  # write | free_space
)
QUEUE_OLDEST_AGE = Gauge(
    "relay_queue_oldest_age_seconds",
    "Age of the oldest recipient waiting for delivery (queued or deferred); 0 when none",
    multiprocess_mode="livemax",
)
TRACKING_MESSAGES = Counter(
    "relay_tracking_messages_total",
    "Messages with tracking on, by what was done: tracked, unchanged (nothing to track), "
    "signed or encrypted (left as they came), no_host, unexpected_structure, error",
    ["result"],
)
TRACKING_VARIANTS = Counter(
    "relay_tracking_variants_total", "Per-recipient tracked bodies rendered and signed"
)
TRACKING_PLAN_SECONDS = Histogram(
    "relay_tracking_plan_seconds",
    "Parsing one message for tracking (once per message, before per-recipient rendering)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
TRACKING_REQUESTS = Counter(
    "relay_tracking_requests_total",
    "Requests to the tracking listener: kind click|open|unsubscribe|page|other, "
    "result recorded|machine|invalid|error",
    ["kind", "result"],
)

MX_LOOKUPS = Counter(
    "relay_mx_lookups_total",
    "Postfix lookups answered (mx.socketmap_listen, mx.policy_listen)",
    ["listener", "result"],  # socketmap | policy; found | notfound | temp | perm | skipped
)
MX_LOOKUP_CONNECTIONS = Counter(
    "relay_mx_lookup_connections_total",
    "Connections to the Postfix lookup listeners: accepted, or refused over the cap",
    ["listener", "result"],
)
MX_LOOKUP_ERRORS = Counter(
    "relay_mx_lookup_errors_total",
    "Postfix lookup connections closed for a protocol violation or an idle timeout",
    ["listener", "reason"],  # protocol | timeout
)

SMTP_DATA_BYTES = Gauge(
    "relay_smtp_data_buffered_bytes",
    "DATA bytes held in memory by SMTP sessions now (bounded per process by "
    "smtp.data_memory_limit)",
    multiprocess_mode="livesum",
)
AUTH_THROTTLED = Counter(
    "relay_auth_throttled_total",
    "Logins refused without checking the password, after too many failures",
    ["front", "scope"],  # front: smtp | api (user.login); scope: ip | user
)
LIMITS_FALLBACK = Gauge(
    "relay_limits_fallback",
    "1 while limits are counted without the shared counters they belong in (redis: Redis is "
    "unreachable, this node counts alone; main_process: a worker counts alone)",
    ["counters"],
    multiprocess_mode="livemax",
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
