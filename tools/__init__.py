"""Development tools run from a checkout (not installed with the relay)."""
