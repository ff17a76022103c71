"""The hot path's fast versions give exactly what the library versions give."""

from __future__ import annotations

import random

import dkim
import pytest
from aiosmtpd.smtp import SMTP
from dkim.canonicalization import CanonicalizationPolicy

from relay.dkim import relaxed_body
from relay.message import MalformedMessage, from_addresses, has_line_longer_than, parse
from relay.smtp.protocol import RelaySMTP

RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
PIECES = [b"a", b"b c", b" ", b"  ", b"\t", b"\r\n", b"\r\n\r\n", b".", b"x y\t\r\n", b"\xc3\xa9"]


def random_bodies(n: int = 3000) -> list[bytes]:
    rnd = random.Random(1)
    out = [b"", b"\r\n", b"\r\n\r\n", b"x", b"x\r\n", b"x\r\n\r\n\r\n", b" ", b" \r\n"]
    for _ in range(n):
        out.append(b"".join(rnd.choice(PIECES) for _ in range(rnd.randint(1, 12))))
    return out


def test_relaxed_body_matches_dkimpy() -> None:
    for body in random_bodies():
        assert relaxed_body(body) == RELAXED.canonicalize_body(body), body


def crlf_messages() -> list[bytes]:
    rnd = random.Random(2)
    heads = [
        b"From: a@b.c",
        b"Subject: x",
        b" folded",
        b"\tfolded2",
        b"X-Empty:",
        b"From x y",
        b"To: a@b.c,\r\n b@c.d",
    ]
    out = [
        b"",
        b"\r\n",
        b"\r\nbody\r\n",
        b"From: a@b.c",
        b"From: a@b.c\r\n",
        b"From: a@b.c\r\n\r\n",
    ]
    for _ in range(2000):
        lines = [rnd.choice(heads[:2] + heads[4:])] + [
            rnd.choice(heads) for _ in range(rnd.randint(0, 5))
        ]
        body = b"".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 6)))
        out.append(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        out.append(b"\r\n".join(lines) + b"\r\n")
    return out


def test_parse_matches_dkimpy_rfc822_parse() -> None:
    for data in crlf_messages():
        try:
            expected = dkim.rfc822_parse(data)
        except (dkim.MessageFormatError, IndexError):  # dkimpy crashes on a leading continuation
            with pytest.raises(MalformedMessage):
                parse(data)
            continue
        got = parse(data)
        assert (got.headers, got.body) == (expected[0], expected[1]), data


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b" a@example.com\r\n", ["a@example.com"]),
        (b" <a@example.com>\r\n", ["a@example.com"]),
        (b' "Doe, John" <j@example.com>\r\n', ["j@example.com"]),
        (b" =?utf-8?q?J=C3=B6rg?= <j@example.com>\r\n", ["j@example.com"]),
        (b" John\r\n Doe <j@example.com>\r\n", ["j@example.com"]),
        (b" a@example.com, b@example.com\r\n", ["a@example.com", "b@example.com"]),
        (b" a@example.com (comment)\r\n", ["a@example.com"]),
    ],
)
def test_from_addresses(value: bytes, expected: list[str]) -> None:
    assert from_addresses(parse(b"From:" + value + b"\r\nx")) == expected


def test_long_lines() -> None:
    assert not has_line_longer_than(b"a" * 998 + b"\r\n" + b"b" * 998, 998)
    assert has_line_longer_than(b"a\r\n" + b"b" * 999 + b"\r\n", 998)
    assert not has_line_longer_than(b"b" * 5000, 0)


@pytest.mark.parametrize(
    "arg",
    [
        "<a@example.com>",
        "<a@example.com> SIZE=100 BODY=8BITMIME",
        " <a.b+c@ex-ample.com>",
        '<"quoted"@example.com>',
        "a@example.com",
        "<@route,@r2:a@example.com>",
        "<>",
        "<a b@c>",
        "<a@[127.0.0.1]>",
        "<a@example.com",
    ],
)
def test_getaddr_matches_aiosmtpd(arg: str) -> None:
    assert RelaySMTP._getaddr(SMTP.__new__(RelaySMTP), arg) == SMTP._getaddr(
        SMTP.__new__(SMTP), arg
    )


def test_relaxed_headers_match_dkimpy() -> None:
    from relay.dkim import relaxed_headers

    rnd = random.Random(3)
    values = [
        b" a\r\n",
        b"  a  b \r\n",
        b" a\r\n\tb\r\n",
        b"\tx\r\n",
        b" \xc3\xa9 \r\n",
        b"\r\n",
        b" a\tb\r\n",
        b" trailing  \r\n",
        b" x\ry\r\n",
    ]
    for _ in range(500):
        headers = [
            [rnd.choice([b"From", b"Subject", b"To ", b"X-A"]), rnd.choice(values)]
            for _ in range(4)
        ]
        names = {b"from", b"subject", b"to", b"x-a"}
        assert relaxed_headers(headers, names) == RELAXED.canonicalize_headers(headers)
