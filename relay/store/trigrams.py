"""Which part of a Query text PostgreSQL's trigram indexes are asked for.

A substring search (``LIKE '%text%'``) through a pg_trgm GIN index reads the posting list of
every trigram of the text. On the event log most trigrams of a typical query are in most rows
(``exa``, ``com``, ``use``, ``ser``...), so searching ``user2944943@company109.example`` over a
month read about 1,300 index pages per day's partition, nearly all of them for trigrams that
rule out nothing.

A row that contains the text contains each of its substrings, in order. So the index is asked
only for the text's rare stretches, the longest runs of letters and digits whose every trigram
is rare (``LIKE '%2944943%109%'``), and the whole text is then checked on the rows found
(``strpos``): the same rows, from far fewer index pages. A trigram is common when more than
``COMMON_SHARE`` of a sample of rows hold it. The sample (``TABLESAMPLE``, at most
``SAMPLE_ROWS`` rows) is taken per process and table at the first search, and again after
``SAMPLE_TTL``. When no sample can be taken (no pg_trgm), or the text has fewer than
``MIN_RARE_TRIGRAMS`` rare trigrams in such stretches (``has shipped``: every trigram common),
the whole text goes to the index, as before.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

log = structlog.get_logger("relay.store")

COMMON_SHARE = 0.01
# Fewer rare trigrams than this and the rows holding them may be many (each is in up to 1 %
# of the rows): the whole text, common trigrams and all, prunes better.
MIN_RARE_TRIGRAMS = 3
SAMPLE_ROWS = 20_000
SAMPLE_TTL = 3600.0

# pg_trgm reads words: runs of letters and digits (anything else separates them).
_WORD = re.compile(r"[^\W_]+")

HAS_TRIGRAMS = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm')"
# Rows of a table, estimated from the statistics (a partitioned table: its partitions').
ESTIMATED_ROWS = """
SELECT coalesce(sum(greatest(c.reltuples, 0)), 0) FROM pg_class c
WHERE c.oid = CAST(:table AS regclass)
   OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = CAST(:table AS regclass))
"""
# The trigrams in more than :share of a sample of the table's search texts.
COMMON = """
WITH s AS MATERIALIZED (
    SELECT {expr} AS text FROM {table} TABLESAMPLE SYSTEM ({percent}) LIMIT {rows}
)
SELECT t FROM s CROSS JOIN LATERAL unnest(show_trgm(s.text)) AS t
GROUP BY t HAVING count(*) > CAST(:share AS float8) * (SELECT count(*) FROM s)
"""


def index_pattern(text: str, common: frozenset[str]) -> str | None:
    """A LIKE pattern (no wildcard of the text's own: letters and digits only) that every
    string containing ``text`` matches, made of ``text``'s rare stretches in order; None when
    it has none (then the whole text is the better question)."""
    chunks: list[str] = []
    for word in _WORD.finditer(text):
        w, end = word.group(), 0  # end: where the last chunk of this word ended
        i = 0
        while i + 3 <= len(w):
            if w[i : i + 3] in common:
                i += 1
                continue
            j = i
            while j + 3 <= len(w) and w[j : j + 3] not in common:
                j += 1
            # w[i:j+2] holds the rare trigrams i..j-1; it may not overlap the previous chunk
            # (LIKE '%a%b%' wants b after a).
            start = max(i, end)
            if j + 2 - start >= 3:
                chunks.append(w[start : j + 2])
                end = j + 2
            i = j
    if sum(len(c) - 2 for c in chunks) < MIN_RARE_TRIGRAMS:
        return None
    return "%" + "%".join(chunks) + "%"


@dataclass(frozen=True, slots=True)
class _Sample:
    common: frozenset[str] | None  # None: no sample (the whole text is searched)
    expires: float


_samples: dict[tuple[str, str], _Sample] = {}


async def common_trigrams(
    conn: AsyncConnection, table: str, expr: str, *, now: float | None = None
) -> frozenset[str] | None:
    """The common trigrams of ``expr`` over ``table`` (PostgreSQL), from this process's
    sample; None when there is none to be had."""
    now = time.monotonic() if now is None else now
    key = (conn.engine.url.render_as_string(hide_password=True), table)
    hit = _samples.get(key)
    if hit is not None and hit.expires > now:
        return hit.common
    common = await _sample(conn, table, expr)
    _samples[key] = _Sample(common, now + SAMPLE_TTL)
    return common


async def _sample(conn: AsyncConnection, table: str, expr: str) -> frozenset[str] | None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    started = time.perf_counter()
    try:
        # A savepoint: a sample that fails (pg_trgm outside the search path) leaves the
        # caller's transaction usable, and the search goes on with the whole text.
        async with conn.begin_nested():
            if not (await conn.execute(text(HAS_TRIGRAMS))).scalar():
                return None
            rows = float((await conn.execute(text(ESTIMATED_ROWS), {"table": table})).scalar() or 0)
            # SYSTEM samples whole pages: twice the rows wanted, LIMIT keeps SAMPLE_ROWS.
            percent = 100.0 if rows <= SAMPLE_ROWS else max(0.001, 200.0 * SAMPLE_ROWS / rows)
            statement = COMMON.format(
                expr=expr, table=table, percent=f"{percent:.6f}", rows=SAMPLE_ROWS
            )
            found = await conn.execute(text(statement), {"share": COMMON_SHARE})
            common = frozenset(str(r[0]) for r in found)
    except DBAPIError as exc:
        log.warning("search trigrams not sampled", table=table, error=str(exc)[:200])
        return None
    log.info(
        "search trigrams sampled",
        table=table,
        common=len(common),
        seconds=round(time.perf_counter() - started, 3),
    )
    return common
