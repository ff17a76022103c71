"""The admin HTTP app: management commands of the API documents, health and metrics."""
