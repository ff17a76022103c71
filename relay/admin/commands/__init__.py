"""Importing this package registers every command with the dispatcher."""

from relay.admin.commands import (  # noqa: F401
    deliveryservers,
    domains,
    relay_domains,
    sender_domains,
    smtp,
    suppressions,
    users,
)
