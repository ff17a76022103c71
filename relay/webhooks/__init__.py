"""Webhooks: URL rules (``urls``) and signing keys (``keys``). Delivery comes later."""
