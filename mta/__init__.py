"""Delivery and MTA integration: queue workers, routing, SMTP client pool, retry policy."""
