"""One settings object: TOML file, then environment overrides, validated once at start.

Every setting lives in a section dataclass below and is documented in
config/relay.example.toml. Any setting can be overridden by an environment variable named
``RELAY_<SECTION>_<KEY>`` (upper case); the stable short names of CONTRACT.md
(RELAY_DATABASE_URL, RELAY_SMTP_LISTEN, ...) are mapped explicitly in ``ENV_ALIASES``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from relay.addresses import is_valid_email


class ConfigError(Exception):
    """Raised with every problem found, one per line, so an operator fixes them in one pass."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class ServerSettings:
    hostname: str = ""
    data_dir: str = "./var"
    shutdown_timeout: float = 30.0
    node_id: str = ""


@dataclass
class DatabaseSettings:
    url: str = ""
    pool_size: int = 10
    echo: bool = False


@dataclass
class RedisSettings:
    url: str = ""


@dataclass
class SmtpSettings:
    processes: int = 2
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:2525"])
    smtps_listen: list[str] = field(default_factory=lambda: ["127.0.0.1:2465"])
    tls_cert: str = ""
    tls_key: str = ""
    plaintext_auth_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_line_length: int = 998
    max_auth_failures: int = 3
    max_connections: int = 2000
    max_connections_per_ip: int = 100
    listen_backlog: int = 1024
    command_timeout: float = 300.0
    max_session_time: float = 3600.0
    data_memory_limit: int = 256 * 1024 * 1024
    auth_failure_window: float = 900.0
    auth_max_failures_per_ip: int = 10
    auth_max_failures_per_user: int = 30
    advertised_ports: list[int] = field(default_factory=list)
    advertised_host: str = ""


@dataclass
class DkimSettings:
    key_bits: int = 2048
    selector: str = ""
    sign_threads: int = 1


@dataclass
class DeliverySettings:
    enabled: bool = True
    processes: int = 1
    nice: int = 10
    concurrency: int = 50
    batch_size: int = 200
    # Short, renewed every third while the delivery runs: a dead node's work is free again
    # within one lease (mta/worker.py).
    lease_seconds: float = 30.0
    # How long one message's delivery attempt may take, from its claim, before the
    # recipients not answered yet are deferred.
    attempt_timeout: float = 240.0
    poll_interval: float = 2.0
    retry_base: float = 60.0
    retry_max_interval: float = 3600.0
    retry_jitter: float = 0.2
    max_age: float = 5 * 24 * 3600.0
    connections_per_server: int = 10
    idle_timeout: float = 30.0
    messages_per_connection: int = 1000
    stop_timeout: float = 30.0
    tls_verify: bool = True
    tls_ca_file: str = ""


@dataclass
class AdminSettings:
    listen: str = "127.0.0.1:8025"
    api_key: str = ""
    session_ttl: float = 24 * 3600.0
    rate_limit_requests: int = 100
    rate_limit_window: float = 60.0
    login_max_failures: int = 10
    login_max_failures_per_ip: int = 5
    login_failure_window: float = 900.0
    relay_domains_refresh: float = 60.0


@dataclass
class DnsSettings:
    nameservers: list[str] = field(default_factory=list)
    timeout: float = 5.0
    cache_ttl: float = 60.0
    spf_include: str = ""
    return_path_target: str = ""
    tracking_target: str = ""
    default_subdomain: str = "mail"
    default_track_prefix: str = "track"
    default_track_merge: str = "-"


# Substrings (case-insensitive) of the User-Agent of link scanners, security gateways, link
# previewers and HTTP libraries: their hits are recorded with data.machine (docs/tracking.md).
DEFAULT_MACHINE_USER_AGENTS = (
    "bot/",
    "bot-",
    "bot;",
    "bot)",
    "googlebot",
    "bingbot",
    "slackbot",
    "telegrambot",
    "crawler",
    "spider",
    "scanner",
    "preview",
    "barracuda",
    "mimecast",
    "proofpoint",
    "forcepoint",
    "ironport",
    "symantec",
    "trend micro",
    "sophos",
    "fortiguard",
    "headlesschrome",
    "phantomjs",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww-perl",
    "curl/",
    "wget/",
    "facebookexternalhit",
    "whatsapp",
)


@dataclass
class TrackingSettings:
    listen: str = "127.0.0.1:8026"
    scheme: str = "https"
    host: str = ""
    secret: str = ""
    machine_seconds: float = 3.0
    machine_user_agents: list[str] = field(
        default_factory=lambda: list(DEFAULT_MACHINE_USER_AGENTS)
    )
    trusted_proxies: list[str] = field(default_factory=list)
    unsubscribe_text: str = "Unsubscribe"


@dataclass
class EventsSettings:
    retention_days: int = 90
    partitions_ahead_days: int = 7


@dataclass
class LogSettings:
    format: str = ""
    level: str = "info"


@dataclass
class SecuritySettings:
    key_encryption_key: str = ""
    # Key of the VERP tokens in return paths (mta/returnpath.py); every node must use the same.
    # Empty: generated once and kept in the database, which every node shares.
    return_path_secret: str = ""


@dataclass
class MxSettings:
    """The MX side: the listener for bounces and complaints (mta/bounces/), and the lookups
    MX servers ask (mta/postfix/)."""

    listen: list[str] = field(default_factory=list)
    feedback_addresses: list[str] = field(default_factory=list)
    max_message_size: int = 10 * 1024 * 1024
    max_line_length: int = 998
    max_connections: int = 200
    max_connections_per_ip: int = 20
    command_timeout: float = 300.0
    report_retention_days: float = 30.0
    report_max_stored: int = 10_000
    # Postfix lookups: socketmap table and policy delegation; empty = off.
    socketmap_listen: list[str] = field(default_factory=list)
    policy_listen: list[str] = field(default_factory=list)
    lookup_max_connections: int = 256
    lookup_idle_timeout: float = 300.0
    # Older than this (seconds), the relay-domain set is not trusted: TEMP / DEFER_IF_PERMIT.
    lookup_max_stale: float = 900.0


@dataclass
class WebhookSettings:
    enabled: bool = True
    allow_networks: list[str] = field(default_factory=list)
    concurrency: int = 100
    per_endpoint_concurrency: int = 10
    batch_size: int = 200
    poll_interval: float = 1.0
    connect_timeout: float = 5.0
    timeout: float = 15.0
    lease_seconds: float = 60.0
    max_response_bytes: int = 65536
    retry_base: float = 30.0
    retry_max_interval: float = 4 * 3600.0
    retry_jitter: float = 0.2
    max_age: float = 3 * 24 * 3600.0
    max_attempts: int = 0
    retention_days: float = 7.0


@dataclass
class PowerMtaSettings:
    # relay pmta-accounting: bounce categories that suppress the recipient.
    suppress_categories: list[str] = field(
        default_factory=lambda: ["bad-mailbox", "bad-domain", "inactive-mailbox"]
    )
    # relay pmta-sync: the include files PowerMTA reads, and how to make it read them again.
    include_dir: str = "/etc/pmta/relay"
    relay_domains_file: str = "relay-domains.conf"
    bounce_domains_file: str = "relay-bounce-domains.conf"
    reload_command: str = "pmta reload"
    reload_timeout: float = 60.0
    # relay pmta-accounting on PostgreSQL: batches committed at once, each on a connection of
    # its own (SQLite has one writer: always 1 there).
    accounting_connections: int = 2


@dataclass
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    events: EventsSettings = field(default_factory=EventsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    mx: MxSettings = field(default_factory=MxSettings)
    powermta: PowerMtaSettings = field(default_factory=PowerMtaSettings)

    # Derived once by load(); not settings themselves.
    source: str = ""
    # RELAY_* environment variables that name no setting (a typo would otherwise be silent).
    unknown_env: list[str] = field(default_factory=list)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{(self.data_path / 'relay.sqlite3').resolve()}"

    @property
    def is_embedded_default(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def hostname(self) -> str:
        return self.server.hostname or socket.getfqdn()


# CONTRACT.md's stable variables, mapped to (section, key).
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "RELAY_DATA_DIR": ("server", "data_dir"),
    "RELAY_DATABASE_URL": ("database", "url"),
    "RELAY_REDIS_URL": ("redis", "url"),
    "RELAY_SMTP_LISTEN": ("smtp", "listen"),
    "RELAY_SMTPS_LISTEN": ("smtp", "smtps_listen"),
    "RELAY_ADMIN_LISTEN": ("admin", "listen"),
    "RELAY_ADMIN_API_KEY": ("admin", "api_key"),
    "RELAY_DNS_NAMESERVERS": ("dns", "nameservers"),
    "RELAY_TLS_CERT": ("smtp", "tls_cert"),
    "RELAY_TLS_KEY": ("smtp", "tls_key"),
    "RELAY_HOSTNAME": ("server", "hostname"),
    "RELAY_LOG_FORMAT": ("log", "format"),
    "RELAY_KEY_ENCRYPTION_KEY": ("security", "key_encryption_key"),
    "RELAY_TRACKING_LISTEN": ("tracking", "listen"),
    "RELAY_SOCKETMAP_LISTEN": ("mx", "socketmap_listen"),
    "RELAY_MX_LISTEN": ("mx", "listen"),
}

_SECTIONS = [
    f.name for f in dataclasses.fields(Settings) if f.name not in ("source", "unknown_env")
]


def _convert(raw: Any, typ: Any, where: str, problems: list[str]) -> Any:
    """Coerce a TOML or environment value to the declared field type."""
    origin = get_origin(typ)
    try:
        if origin is list:
            (inner,) = get_args(typ)
            if isinstance(raw, str):
                items: list[Any] = [p.strip() for p in raw.split(",") if p.strip()]
            elif isinstance(raw, list):
                items = raw
            else:
                raise ValueError("expected a list")
            return [_convert(i, inner, where, problems) for i in items]
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true or false")
        if typ is int:
            return _whole_number(raw)
        if typ is float:
            return _number(raw)
        if typ is str:
            if not isinstance(raw, str | int | float):
                raise ValueError("expected a string")
            return str(raw)
    except (TypeError, ValueError) as exc:
        problems.append(f"{where}: {exc} (got {raw!r})")
        return None
    return raw


def _whole_number(raw: Any) -> int:
    """An int from TOML or the environment; 1.5 or "lots" is an error, never truncated."""
    if isinstance(raw, bool):
        raise ValueError("expected a whole number")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        if raw.is_integer():
            return int(raw)
        raise ValueError("expected a whole number")
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ValueError("expected a whole number") from None


def _number(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _apply(
    section_obj: Any, section: str, values: dict[str, Any], origin: str, problems: list[str]
) -> None:
    hints = get_type_hints(type(section_obj))
    for key, raw in values.items():
        if key not in hints:
            problems.append(f"{origin}: unknown setting [{section}] {key}")
            continue
        value = _convert(raw, hints[key], f"{origin} [{section}] {key}", problems)
        if value is not None:
            setattr(section_obj, key, value)


def load(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), apply environment overrides, validate. Raises ConfigError."""
    env = dict(os.environ if env is None else env)
    problems: list[str] = []
    settings = Settings()
    path = path or env.get("RELAY_CONFIG") or None
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError([f"configuration file not found: {path}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
        for section, values in data.items():
            if section not in _SECTIONS or not isinstance(values, dict):
                problems.append(f"{path}: unknown section [{section}]")
                continue
            _apply(getattr(settings, section), section, values, str(path), problems)
        settings.source = str(path)

    for name, (section, key) in ENV_ALIASES.items():
        if name in env:
            _apply(getattr(settings, section), section, {key: env[name]}, name, problems)
    for name, raw in env.items():
        if not name.startswith("RELAY_") or name in ENV_ALIASES or name == "RELAY_CONFIG":
            continue
        rest = name[len("RELAY_") :].lower()
        for section in _SECTIONS:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                if key in get_type_hints(type(getattr(settings, section))):
                    _apply(getattr(settings, section), section, {key: raw}, name, problems)
                    break
        else:
            if not name.startswith(_NOT_SETTINGS):
                settings.unknown_env.append(_unknown_env(name))

    problems.extend(validate(settings))
    if problems:
        raise ConfigError(problems)
    return settings


# RELAY_* names that are not settings: the relay's own child processes and the test suite's.
_NOT_SETTINGS = ("RELAY_CHILD_NAME", "RELAY_TEST_")


def _unknown_env(name: str) -> str:
    """'RELAY_SMTP_LISTNE is not a setting (did you mean RELAY_SMTP_LISTEN?)'."""
    known = list(ENV_ALIASES)
    defaults = Settings()
    for section in _SECTIONS:
        keys = get_type_hints(type(getattr(defaults, section)))
        known += [f"RELAY_{section}_{key}".upper() for key in keys]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"environment variable {name} is not a setting{hint}"


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """'host:port', '[v6]:port' or a bare host when default_port is given."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"missing port in {value!r}")
        return host, default_port
    if not port_text.isdigit():
        raise ValueError(f"port is not a number in {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


def validate(s: Settings) -> list[str]:
    problems: list[str] = []
    for name, items in (
        ("smtp.listen", s.smtp.listen),
        ("smtp.smtps_listen", s.smtp.smtps_listen),
        ("mx.socketmap_listen", s.mx.socketmap_listen),
        ("mx.policy_listen", s.mx.policy_listen),
        ("mx.listen", s.mx.listen),
    ):
        for item in items:
            try:
                parse_hostport(item)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    try:
        parse_hostport(s.admin.listen)
    except ValueError as exc:
        problems.append(f"admin.listen: {exc}")
    for net in s.smtp.plaintext_auth_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"smtp.plaintext_auth_networks: not a network: {net!r}")
    for ns in s.dns.nameservers:
        try:
            host, _ = parse_hostport(ns, 53)
            ipaddress.ip_address(host)
        except ValueError:
            problems.append(f"dns.nameservers: expected ip or ip:port, got {ns!r}")
    url = s.database_url
    if not (url.startswith("sqlite+aiosqlite:///") or url.startswith("postgresql+asyncpg://")):
        problems.append(
            "database.url: expected sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB"
        )
    if s.redis.url and urlsplit(s.redis.url).scheme not in ("redis", "rediss", "unix"):
        problems.append("redis.url: expected redis://HOST:PORT/N")
    if bool(s.smtp.tls_cert) != bool(s.smtp.tls_key):
        problems.append("smtp.tls_cert and smtp.tls_key must be given together")
    for name in ("tls_cert", "tls_key"):
        value = getattr(s.smtp, name)
        if value and not Path(value).is_file():
            problems.append(f"smtp.{name}: file not found: {value}")
    positive = {
        "smtp.max_message_size": s.smtp.max_message_size,
        "smtp.max_recipients": s.smtp.max_recipients,
        "smtp.max_auth_failures": s.smtp.max_auth_failures,
        "smtp.max_connections": s.smtp.max_connections,
        "smtp.max_connections_per_ip": s.smtp.max_connections_per_ip,
        "delivery.concurrency": s.delivery.concurrency,
        "delivery.batch_size": s.delivery.batch_size,
        "delivery.connections_per_server": s.delivery.connections_per_server,
        "dkim.sign_threads": s.dkim.sign_threads,
        "admin.rate_limit_requests": s.admin.rate_limit_requests,
        "admin.login_max_failures": s.admin.login_max_failures,
        "admin.login_max_failures_per_ip": s.admin.login_max_failures_per_ip,
        "smtp.listen_backlog": s.smtp.listen_backlog,
        "smtp.auth_max_failures_per_ip": s.smtp.auth_max_failures_per_ip,
        "smtp.auth_max_failures_per_user": s.smtp.auth_max_failures_per_user,
        "database.pool_size": s.database.pool_size,
        "mx.max_message_size": s.mx.max_message_size,
        "mx.max_connections": s.mx.max_connections,
        "mx.max_connections_per_ip": s.mx.max_connections_per_ip,
        "mx.report_max_stored": s.mx.report_max_stored,
    }
    for name, value in positive.items():
        if value is not None and value < 1:
            problems.append(f"{name}: must be at least 1")
    if s.smtp.data_memory_limit < s.smtp.max_message_size:
        problems.append("smtp.data_memory_limit: at least smtp.max_message_size")
    if s.smtp.max_session_time < 0 or s.smtp.auth_failure_window <= 0:
        problems.append("smtp.max_session_time >= 0 (0: no limit) and smtp.auth_failure_window > 0")
    if s.smtp.max_line_length < 0:
        problems.append("smtp.max_line_length: must be 0 (no limit) or more")
    if s.dkim.key_bits not in (1024, 2048, 3072, 4096):
        problems.append("dkim.key_bits: one of 1024, 2048, 3072, 4096")
    if s.log.format not in ("", "json", "console"):
        problems.append("log.format: json or console")
    if s.log.level.lower() not in ("debug", "info", "warning", "error"):
        problems.append("log.level: debug, info, warning or error")
    if s.security.key_encryption_key:
        from relay.secrets import decode_kek

        try:
            decode_kek(s.security.key_encryption_key)
        except ValueError as exc:
            problems.append(f"security.key_encryption_key: {exc}")
    if s.security.return_path_secret and len(s.security.return_path_secret) < 16:
        problems.append("security.return_path_secret: at least 16 characters (random)")
    for address in s.mx.feedback_addresses:
        if not is_valid_email(address):
            problems.append(f"mx.feedback_addresses: not an email address: {address!r}")
    if s.mx.max_line_length < 0:
        problems.append("mx.max_line_length: must be 0 (no limit) or more")
    if s.mx.command_timeout <= 0 or s.mx.report_retention_days <= 0:
        problems.append("mx.command_timeout and mx.report_retention_days: must be more than 0")
    if s.admin.relay_domains_refresh <= 0:
        problems.append("admin.relay_domains_refresh: must be more than 0")
    if s.dns.timeout <= 0 or s.dns.cache_ttl < 0:
        problems.append("dns.timeout > 0 and dns.cache_ttl >= 0")
    if not 1 <= s.smtp.processes <= 64:
        problems.append("smtp.processes: 1 (the main process only) to 64")
    if not 0 <= s.delivery.nice <= 19:
        problems.append("delivery.nice: 0 to 19")
    if not 0 <= s.delivery.processes <= 64:
        problems.append("delivery.processes: 0 (in the main process) to 64")
    if s.delivery.retry_base <= 0 or s.delivery.retry_max_interval < s.delivery.retry_base:
        problems.append("delivery.retry_base > 0 and retry_max_interval >= retry_base")
    if s.admin.rate_limit_window <= 0 or s.admin.login_failure_window <= 0:
        problems.append("admin.rate_limit_window and admin.login_failure_window: above 0")
    if s.delivery.tls_ca_file and not Path(s.delivery.tls_ca_file).is_file():
        problems.append(f"delivery.tls_ca_file: file not found: {s.delivery.tls_ca_file}")
    if s.delivery.lease_seconds < 3 or s.delivery.poll_interval <= 0:
        problems.append("delivery.lease_seconds: at least 3; delivery.poll_interval: above 0")
    if s.delivery.attempt_timeout <= 0:
        problems.append("delivery.attempt_timeout: must be more than 0")
    if s.delivery.max_age <= 0 or s.delivery.idle_timeout <= 0:
        problems.append("delivery.max_age and delivery.idle_timeout: must be more than 0")
    if s.delivery.messages_per_connection < 1:
        problems.append("delivery.messages_per_connection: must be at least 1")
    if not 0 <= s.delivery.retry_jitter < 1:
        problems.append("delivery.retry_jitter: between 0 and 1")
    problems.extend(_validate_tracking(s.tracking))
    problems.extend(_validate_webhooks(s.webhooks))
    if s.events.retention_days < 0:
        problems.append("events.retention_days: 0 (keep every event) or more")
    if not 1 <= s.events.partitions_ahead_days <= 366:
        problems.append("events.partitions_ahead_days: 1 to 366")
    problems.extend(_validate_mx_powermta(s))
    return problems


# PowerMTA's bounce categories (its User's Guide, "Bounce categories").
POWERMTA_BOUNCE_CATEGORIES = frozenset(
    {
        "bad-configuration",
        "bad-connection",
        "bad-domain",
        "bad-mailbox",
        "content-related",
        "inactive-mailbox",
        "invalid-sender",
        "message-expired",
        "no-answer-from-host",
        "other",
        "policy-related",
        "protocol-errors",
        "quota-issues",
        "relaying-issues",
        "routing-errors",
        "spam-related",
        "virus-related",
    }
)


def _validate_mx_powermta(s: Settings) -> list[str]:
    problems: list[str] = []
    if s.mx.lookup_max_connections < 1:
        problems.append("mx.lookup_max_connections: must be at least 1")
    if s.mx.lookup_idle_timeout <= 0 or s.mx.lookup_max_stale <= 0:
        problems.append("mx.lookup_idle_timeout and mx.lookup_max_stale: must be more than 0")
    for category in s.powermta.suppress_categories:
        if category.lower() not in POWERMTA_BOUNCE_CATEGORIES:
            problems.append(f"powermta.suppress_categories: unknown category {category!r}")
    for name in ("relay_domains_file", "bounce_domains_file"):
        value = getattr(s.powermta, name)
        if not value or "/" in value or value.startswith("."):
            problems.append(f"powermta.{name}: a file name inside powermta.include_dir")
    if s.powermta.reload_timeout <= 0:
        problems.append("powermta.reload_timeout: must be more than 0")
    if not 1 <= s.powermta.accounting_connections <= 16:
        problems.append("powermta.accounting_connections: 1 to 16")
    return problems


def _validate_webhooks(w: WebhookSettings) -> list[str]:
    problems: list[str] = []
    for net in w.allow_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"webhooks.allow_networks: not a network: {net!r}")
    for name in ("concurrency", "per_endpoint_concurrency", "batch_size"):
        if getattr(w, name) < 1:
            problems.append(f"webhooks.{name}: must be at least 1")
    if w.poll_interval <= 0 or w.connect_timeout <= 0 or w.timeout <= 0:
        problems.append("webhooks.poll_interval, connect_timeout and timeout: more than 0")
    # An attempt must end (its total timeout) well before its lease does, or another worker
    # could claim the delivery while it is still being sent.
    if w.lease_seconds < w.timeout + 10:
        problems.append("webhooks.lease_seconds: at least webhooks.timeout + 10")
    if w.max_response_bytes < 0:
        problems.append("webhooks.max_response_bytes: 0 or more")
    if w.retry_base <= 0 or w.retry_max_interval < w.retry_base:
        problems.append("webhooks.retry_base > 0 and retry_max_interval >= retry_base")
    if not 0 <= w.retry_jitter < 1:
        problems.append("webhooks.retry_jitter: between 0 and 1")
    if w.max_age <= 0 or w.max_attempts < 0:
        problems.append("webhooks.max_age > 0 and webhooks.max_attempts >= 0")
    if w.retention_days <= 0:
        problems.append("webhooks.retention_days: more than 0")
    return problems


def _validate_tracking(t: TrackingSettings) -> list[str]:
    problems: list[str] = []
    if t.listen:
        try:
            parse_hostport(t.listen)
        except ValueError as exc:
            problems.append(f"tracking.listen: {exc}")
    if t.scheme not in ("https", "http"):
        problems.append("tracking.scheme: https or http")
    if t.host and not _is_host(t.host):
        problems.append(f"tracking.host: not a host name: {t.host!r}")
    if t.secret:
        from relay.tracking.tokens import decode_secret

        try:
            decode_secret(t.secret)
        except ValueError as exc:
            problems.append(f"tracking.secret: {exc}")
    if t.machine_seconds < 0:
        problems.append("tracking.machine_seconds: 0 (off) or more")
    for net in t.trusted_proxies:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"tracking.trusted_proxies: not a network: {net!r}")
    if not t.unsubscribe_text.strip():
        problems.append("tracking.unsubscribe_text: must not be empty")
    return problems


_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)


def _is_host(value: str) -> bool:
    """A DNS name (RFC 1123 labels), optionally with :port: what goes into a URL's authority."""
    name, _, port = value.partition(":")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        return False
    return len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))
