"""The Query filter on PostgreSQL asks the trigram indexes for the text's rare stretches only
(relay/store/trigrams.py): the same matches as the plain substring search, from fewer index
pages."""

from __future__ import annotations

import random
import re
import time

import pytest
from sqlalchemy import text

from relay.services import Services
from relay.store import eventlog, trigrams
from relay.store.repos import events as repo
from relay.store.repos.suppressions import like_pattern


def _like(pattern: str, value: str) -> bool:
    """SQL LIKE without escapes (index patterns have none)."""
    regex = ".*".join(re.escape(part) for part in pattern.split("%"))
    return re.fullmatch(regex, value, re.DOTALL) is not None


def test_every_text_holding_the_query_matches_its_index_pattern() -> None:
    rng = random.Random(5)
    alphabet = "ab1c2@.x"
    for _ in range(3000):
        query = "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 14)))
        common = frozenset(
            "".join(rng.choice(alphabet) for _ in range(3)) for _ in range(rng.randint(0, 60))
        )
        pattern = trigrams.index_pattern(query, common)
        if pattern is None:
            continue
        chunks = [c for c in pattern.split("%") if c]
        assert chunks and all(len(c) >= 3 for c in chunks)
        assert sum(len(c) - 2 for c in chunks) >= trigrams.MIN_RARE_TRIGRAMS
        # Only rare trigrams are asked for.
        assert not any(c[i : i + 3] in common for c in chunks for i in range(len(c) - 2))
        around = "zz" + query + "zz"
        assert _like(pattern, query) and _like(pattern, around), (query, pattern)


def test_index_pattern_keeps_the_rare_stretches_in_order() -> None:
    common = frozenset(
        [
            "use",
            "ser",
            "er2",
            "com",
            "omp",
            "mpa",
            "pan",
            "any",
            "ny1",
            "exa",
            "xam",
            "amp",
            "mpl",
            "ple",
        ]
    )
    pattern = trigrams.index_pattern("user2944943@company109.example", common)
    assert pattern == "%r2944943%y109%"
    # Every trigram common, or no stretch of three: the whole text is the question.
    assert (
        trigrams.index_pattern("has shipped", frozenset(["has", "shi", "hip", "ipp", "ppe", "ped"]))
        is None
    )
    assert trigrams.index_pattern("example.com", common) is None
    assert trigrams.index_pattern("ab", frozenset()) is None
    # One or two rare trigrams alone may be in many rows: the whole text prunes better.
    assert trigrams.index_pattern("user9@company.example", common) is None
    # Stretches of one word never overlap (LIKE '%a%b%' wants b after a).
    assert trigrams.index_pattern("abcdefg", frozenset({"cde"})) == "%abcd%efg%"


@pytest.mark.postgres
async def test_narrowed_searches_find_what_the_plain_search_finds(services: Services) -> None:
    if services.db.is_sqlite:
        pytest.skip("the trigram indexes are PostgreSQL's")
    now = time.time()
    async with services.db.write() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (created_at, user_id, domain_id, message_id, recipient, "
                "event, smtp_code, smtp_response, data) "
                "SELECT :now - n, 1, 1, NULL, 'user' || (100000 + 37 * n) || '@company' || (n % 50) || "
                "'.example', 'delivered', 250, '250 2.0.0 ok', NULL "
                "FROM generate_series(1, 3000) AS n"
            ),
            {"now": now},
        )
    trigrams._samples.clear()
    async with services.db.read() as conn:
        common = await trigrams.common_trigrams(conn, "events", eventlog.EVENT_SEARCH)
        assert common is not None and {"use", "ser", "com", "exa"} <= common
        # n = 1234
        assert trigrams.index_pattern("user145658@company34.example", common) is not None
        # A sample that fails is no sample, and the transaction goes on.
        assert await trigrams.common_trigrams(conn, "no_such_table", "x") is None
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        for query in (
            "user145658@company34.example",
            "User145658@Company34",
            "r14565",
            "145658@",
            "user12",
            "company3",
            "2.0.0",
            "user145658@company34.examplex",
            "99@company4",
        ):
            q = repo.EventQuery(user_id=1, text=query)
            total, rows = await repo.search(conn, q, 0, 100)
            expected = (
                await conn.execute(
                    text(
                        f"SELECT count(*) FROM events WHERE {eventlog.EVENT_SEARCH} "
                        "LIKE :p ESCAPE '\\'"
                    ),
                    {"p": like_pattern(query.lower())},
                )
            ).scalar()
            assert total == expected, query
            assert len(rows) == min(total, 100)
            assert all(query.lower() in r.recipient.lower() + "\x01250 2.0.0 ok" for r in rows)
