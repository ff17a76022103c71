"""Repositories: every SQL statement of the management side, one module per family.

Functions take an ``AsyncConnection`` (from ``Database.read()`` or ``Database.write()``) so a
command composes several of them in one transaction.
"""
