"""Tracking tokens: what goes in comes out; anything else is None (the listener's 404)."""

from __future__ import annotations

import base64
import os
import uuid

import pytest

from relay import config
from relay.tracking.tokens import CLICK, OPEN, UNSUBSCRIBE, TokenCodec, decode_secret

MID = str(uuid.uuid4())


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(os.urandom(32))


def test_round_trip_of_every_kind(codec: TokenCodec) -> None:
    prefix = codec.prefix(MID, "Rcpt@Example.net", 1_800_000_000)
    assert prefix is not None
    click = codec.read(CLICK, codec.make(CLICK, prefix, 7, "https://example.com/a?b=1&c=%C3%A9"))
    assert click is not None
    assert (click.message_id, click.recipient, click.minted_at) == (
        MID,
        "Rcpt@Example.net",
        1_800_000_000,
    )
    assert (click.link_index, click.url) == (7, "https://example.com/a?b=1&c=%C3%A9")
    for kind in (OPEN, UNSUBSCRIBE):
        token = codec.read(kind, codec.make(kind, prefix))
        assert token is not None and token.recipient == "Rcpt@Example.net"
        assert token.message_id == MID and token.url == ""


def test_tokens_are_url_safe_and_hide_what_they_carry(codec: TokenCodec) -> None:
    prefix = codec.prefix(MID, "secret.person@example.net", 1)
    assert prefix is not None
    token = codec.make(CLICK, prefix, 0, "https://example.com/private-path")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for clear in (b"secret.person", b"example", b"private-path", uuid.UUID(MID).bytes):
        assert clear not in raw


def test_every_single_character_change_is_refused(codec: TokenCodec) -> None:
    prefix = codec.prefix(MID, "r@example.net", 1)
    assert prefix is not None
    token = codec.make(CLICK, prefix, 0, "https://example.com/")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, ch in enumerate(token):
        other = alphabet[(alphabet.index(ch) + 1) % len(alphabet)]
        assert codec.read(CLICK, token[:i] + other + token[i + 1 :]) is None
    assert codec.read(CLICK, token[:-1]) is None
    assert codec.read(CLICK, token + "A") is None


def test_a_token_only_works_for_its_own_kind_and_key(codec: TokenCodec) -> None:
    prefix = codec.prefix(MID, "r@example.net", 1)
    assert prefix is not None
    opened = codec.make(OPEN, prefix)
    assert codec.read(UNSUBSCRIBE, opened) is None
    assert codec.read(CLICK, opened) is None
    assert TokenCodec(os.urandom(32)).read(OPEN, opened) is None


@pytest.mark.parametrize("junk", ["", "x", "!!!!", "AAAA", "A" * 9000, "Zm9v", "AQ"])
def test_junk_is_refused(codec: TokenCodec, junk: str) -> None:
    for kind in (CLICK, OPEN, UNSUBSCRIBE):
        assert codec.read(kind, junk) is None


def test_other_message_ids_and_long_recipients(codec: TokenCodec) -> None:
    prefix = codec.prefix("not-a-uuid", "r@example.net", 1)
    assert prefix is not None
    token = codec.read(OPEN, codec.make(OPEN, prefix))
    assert token is not None and token.message_id == "not-a-uuid"
    # A UUID written another way is kept as written, not canonicalized.
    upper = MID.upper()
    prefix = codec.prefix(upper, "r@example.net", 1)
    assert prefix is not None
    token = codec.read(OPEN, codec.make(OPEN, prefix))
    assert token is not None and token.message_id == upper
    assert codec.prefix(MID, "x" * 250 + "@example.net", 1) is None
    utf8 = codec.prefix(MID, "jöhn@exämple.net", 1)
    assert utf8 is not None
    token = codec.read(OPEN, codec.make(OPEN, utf8))
    assert token is not None and token.recipient == "jöhn@exämple.net"


def test_secret_setting() -> None:
    good = base64.b64encode(os.urandom(32)).decode()
    assert len(decode_secret(good)) == 32
    for bad in ("", "short", base64.b64encode(os.urandom(16)).decode(), "not base64!"):
        with pytest.raises(ValueError):
            decode_secret(bad)
    with pytest.raises(config.ConfigError) as err:
        config.load(None, env={"RELAY_TRACKING_SECRET": "short"})
    assert "tracking.secret" in str(err.value)


def test_tracking_settings_are_validated() -> None:
    env = {
        "RELAY_TRACKING_LISTEN": "nowhere",
        "RELAY_TRACKING_SCHEME": "ftp",
        "RELAY_TRACKING_HOST": "bad host",
        "RELAY_TRACKING_MACHINE_SECONDS": "-1",
        "RELAY_TRACKING_TRUSTED_PROXIES": "10.0.0.0/8,nonsense",
        "RELAY_TRACKING_UNSUBSCRIBE_TEXT": " ",
    }
    with pytest.raises(config.ConfigError) as err:
        config.load(None, env=env)
    text = str(err.value)
    for name in ("listen", "scheme", "host", "machine_seconds", "trusted_proxies", "unsubscribe"):
        assert f"tracking.{name}" in text, name
    ok = config.load(
        None, env={"RELAY_TRACKING_LISTEN": "", "RELAY_TRACKING_HOST": "t.example.org:8443"}
    )
    assert ok.tracking.listen == "" and ok.tracking.host == "t.example.org:8443"
