"""PowerMTA integration: injection headers, accounting records, include files."""
