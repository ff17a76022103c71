"""The durable queue: ingest (group commit of accepted messages) and delivery state."""
