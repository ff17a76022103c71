"""What can go wrong during delivery, classified once.

- The queue's storage: every backend raises ``StorageUnavailable`` (the SQLite runner and the
  asyncpg helper wrap their drivers' errors), which is never fatal to the worker: a claim is
  retried after ``poll_interval``, an outcome batch a few times (mta/recorder.py).
- The connection to a delivery server (``CONNECTION_ERRORS``): dropped, refused, timed out. Not
  an answer about the recipients: they are deferred, or tried on the next server when nothing
  was handed over yet.
- Opening a connection (``OPEN_ERRORS``): the above, TLS verification, STARTTLS missing on a
  "tls" server, AUTH refused, a refused greeting or EHLO. Always temporary, whatever the code.
- During a transaction (``TRANSACTION_FAILURES``): the above plus ``ServerClosing`` (a 421 at
  any step, RFC 5321 3.8) and any other aiosmtplib failure that is not a per-command reply.

Per-command replies (2xx/4xx/5xx to MAIL, RCPT, DATA) are not errors: mta/transaction.py
turns them into ``Reply`` objects and mta/attempt.py into outcomes.
"""

from __future__ import annotations

import ssl

import aiosmtplib

from relay.store.db import StorageUnavailable

STORAGE_ERRORS: tuple[type[BaseException], ...] = (StorageUnavailable,)

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    aiosmtplib.SMTPConnectError,
    ConnectionError,
    TimeoutError,
    OSError,
)

OPEN_ERRORS: tuple[type[BaseException], ...] = (
    aiosmtplib.SMTPException,
    ssl.SSLError,
    ValueError,
    *CONNECTION_ERRORS,
)


class ServerClosing(Exception):
    """421: the server is closing the channel (RFC 5321 3.8); treated as a lost connection."""


TRANSACTION_FAILURES: tuple[type[BaseException], ...] = (
    ServerClosing,
    aiosmtplib.SMTPException,
    *CONNECTION_ERRORS,
)
