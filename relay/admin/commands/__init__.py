"""Importing this package registers every command with the dispatcher."""

from relay.admin.commands import (  # noqa: F401
    apikeys,
    deliveryservers,
    domains,
    events,
    queue,
    relay_domains,
    send,
    sender_domains,
    smtp_credentials,
    stats,
    suppressions,
    usergroups,
    users,
    webhooks,
)
