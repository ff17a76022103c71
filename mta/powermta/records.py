"""PowerMTA accounting records (CSV) -> ``Feedback`` items about our messages.

The file is RFC 4180 CSV whose first line is a header naming the columns (the set depends on
PowerMTA's ``records`` and ``record-fields``, so columns are found by name, never by
position; a file configured for several record types carries the union of their columns).
A record is matched to a message by ``jobId`` (the ``X-Job`` header the relay adds, see
``inject.py``), or a ``header_x-job`` column when PowerMTA copies the header instead, and by
``rcpt``. Time columns are UNIX ``time_t`` or ``YYYY-MM-DD HH:MM:SS+ZZZZ``.

| type | event | suppression |
|---|---|---|
| ``d`` | ``accepted-by-mta`` | |
| ``b``, ``rb`` | ``bounced`` | categories in ``SUPPRESSING_CATEGORIES`` (source ``bounce``) |
| ``t`` | ``deferred`` | |
| ``f`` | ``complained`` | always (source ``complaint``) |

Other types (``r``, ``tq``, ``rs``) say nothing about a recipient's outcome and are ignored.
"""

from __future__ import annotations

import calendar
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from relay import events
from relay.queue.feedback import Feedback

# PowerMTA's hard categories: the address or its domain does not exist or is gone.
SUPPRESSING_CATEGORIES = ("bad-mailbox", "bad-domain", "inactive-mailbox")

EVENTS = {
    "d": events.ACCEPTED_BY_MTA,
    "b": events.BOUNCED,
    "rb": events.BOUNCED,
    "t": events.DEFERRED,
    "f": events.COMPLAINED,
}
IGNORED_TYPES = frozenset({"r", "tq", "rs"})

# Optional columns copied into the event's data, under the names webhooks and the API show.
_DATA_COLUMNS = (
    ("bouncecat", "BounceCategory"),
    ("dsnstatus", "DSNStatus"),
    ("dsndiag", "DSNDiag"),
    ("dsnmta", "DSNMta"),
    ("vmta", "VirtualMTA"),
    ("feedbacktype", "FeedbackType"),
    ("format", "FeedbackFormat"),
    ("useragent", "UserAgent"),
    ("reportingmta", "ReportingMTA"),
)
# RFC 3464 2.3.6: diagnostic-type ";" diagnostic text, e.g. "smtp;550 5.1.1 no such user".
_DIAGNOSTIC = re.compile(r"\s*[A-Za-z][A-Za-z0-9-]*\s*;\s*")
_SMTP_CODE = re.compile(r"([245]\d\d)(?:[\s-]|$)")


class Malformed(ValueError):
    """A line that is not a usable record; the text says why (never the line itself)."""


@dataclass(frozen=True, slots=True)
class Columns:
    """Where each column of interest is in a record of this header (-1: absent)."""

    width: int
    type: int
    time: int
    rcpt: int
    job: int
    header_job: int
    dsn_status: int
    dsn_diag: int
    bounce_cat: int
    feedback_type: int
    data: tuple[tuple[int, str], ...]

    @classmethod
    def of(cls, header: list[str]) -> Columns:
        where: dict[str, int] = {}
        for i, name in enumerate(header):
            where.setdefault(name.strip().lower(), i)
        if not is_header(header):
            raise Malformed("header: the first column must be 'type'")

        def at(name: str) -> int:
            return where.get(name, -1)

        if at("rcpt") < 0 or (at("jobid") < 0 and at("header_x-job") < 0):
            raise Malformed("header: needs the columns rcpt and jobId (or header_x-job)")
        data = tuple((where[c], label) for c, label in _DATA_COLUMNS if c in where)
        return cls(
            width=len(header),
            type=0,
            time=at("timelogged"),
            rcpt=at("rcpt"),
            job=at("jobid"),
            header_job=at("header_x-job"),
            dsn_status=at("dsnstatus"),
            dsn_diag=at("dsndiag"),
            bounce_cat=at("bouncecat"),
            feedback_type=at("feedbacktype"),
            data=data,
        )


def is_header(row: list[str]) -> bool:
    """PowerMTA writes a header line when it starts a file or the pipe program."""
    return bool(row) and row[0] == "type"


_ISO_CACHE: dict[str, float] = {}


def parse_time(value: str) -> float:
    """UNIX seconds of a time_t (``1715680803``) or ``2024-05-14 10:00:03+0000`` value."""
    if value.isdigit():
        return float(value)
    hit = _ISO_CACHE.get(value)
    if hit is not None:
        return hit
    if not (
        len(value) == 24
        and value[4] == "-"
        and value[7] == "-"
        and value[10] == " "
        and value[13] == ":"
        and value[16] == ":"
        and value[19] in "+-"
        and value[20:24].isdigit()
    ):
        raise Malformed("time: neither time_t nor YYYY-MM-DD HH:MM:SS+ZZZZ")
    try:
        y, mo, d = int(value[0:4]), int(value[5:7]), int(value[8:10])
        h, mi, s = int(value[11:13]), int(value[14:16]), int(value[17:19])
    except ValueError:
        raise Malformed("time: neither time_t nor YYYY-MM-DD HH:MM:SS+ZZZZ") from None
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s <= 60):
        raise Malformed("time: out of range")
    offset = int(value[20:22]) * 3600 + int(value[22:24]) * 60
    seconds = float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))
    seconds += -offset if value[19] == "+" else offset
    if len(_ISO_CACHE) >= 4096:  # records arrive in time order: old entries are done
        _ISO_CACHE.clear()
    _ISO_CACHE[value] = seconds
    return seconds


def diagnostic(diag: str) -> tuple[int | None, str]:
    """(SMTP code, reply text) of a dsnDiag value: ``smtp;550 5.1.1 ...`` or ``550 ...``."""
    found = _DIAGNOSTIC.match(diag)
    text = diag[found.end() :] if found else diag.strip()
    code = _SMTP_CODE.match(text)
    return (int(code[1]) if code else None), text


def dedupe_key(kind: str, job: str, rcpt: str, logged: str, status: str, diag: str) -> str:
    """The same record, read twice (a replayed pipe, overlapping rotated files, or the same
    file in the other time format), has the same key."""
    raw = "\x1f".join((kind, job, rcpt.lower(), logged, status, diag))
    return "pmta:" + hashlib.blake2b(raw.encode("utf-8", "replace"), digest_size=16).hexdigest()


def to_feedback(
    cols: Columns, row: list[str], suppressing: frozenset[str] | tuple[str, ...]
) -> Feedback | None:
    """The feedback item of one data row; None for a type that says nothing about an outcome.
    Raises Malformed."""
    if len(row) != cols.width:
        raise Malformed(f"{len(row)} columns, the header has {cols.width}")
    kind = row[0].strip().lower()
    event = EVENTS.get(kind)
    if event is None:
        if kind in IGNORED_TYPES:
            return None
        raise Malformed("unknown record type")
    rcpt = row[cols.rcpt].strip().strip("<>").strip()
    if not rcpt:
        raise Malformed("record without rcpt")
    job = row[cols.job].strip() if cols.job >= 0 else ""
    if not job and cols.header_job >= 0:
        job = row[cols.header_job].strip()
    if not job:
        raise Malformed("record without jobId")
    logged_text = row[cols.time].strip() if cols.time >= 0 else ""
    logged = parse_time(logged_text) if logged_text else 0.0
    status = row[cols.dsn_status].strip() if cols.dsn_status >= 0 else ""
    diag = row[cols.dsn_diag].strip() if cols.dsn_diag >= 0 else ""
    code, response = diagnostic(diag) if diag else (None, status)
    data: dict[str, Any] = {"source": "powermta", "record": kind}
    for i, label in cols.data:
        value = row[i].strip()
        if value:
            data[label] = value
    suppress = reason = None
    if kind == "f":
        suppress = "complaint"
        kind_of = row[cols.feedback_type].strip() if cols.feedback_type >= 0 else ""
        reason = f"feedback report: {kind_of or 'abuse'}"
    elif event == events.BOUNCED:
        category = row[cols.bounce_cat].strip().lower() if cols.bounce_cat >= 0 else ""
        if category in suppressing:
            suppress = "bounce"
            reason = f"{category}: {status or response}"
    return Feedback(
        message_id=job,
        recipient=rcpt,
        event=event,
        smtp_code=code,
        smtp_response=response or None,
        data=data,
        suppress=suppress,
        suppress_reason=reason,
        dedupe_key=dedupe_key(kind, job, rcpt, str(int(logged)), status, diag),
        created_at=logged,
    )
