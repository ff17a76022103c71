"""Webhooks: URL rules (``urls``), signing keys and signatures (``keys``), and delivery: the
outbox worker (``worker``) with its SQL (``sql``, ``store``), send-time address checks
(``resolver``), posts (``sender``), payloads (``payload``) and retry policy (``retry``)."""
