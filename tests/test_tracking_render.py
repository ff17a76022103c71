"""Tracked bodies: what is rewritten, what is left alone, one signed variant per recipient, and
every variant's DKIM signature verifies (dkimpy against the DNS stub; OpenDKIM where it can
run)."""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from selectolax.lexbor import LexborHTMLParser

from relay.config import Settings
from relay.directory import DomainView
from relay.dkim import DkimSigner, generate_key
from relay.dns.records import dkim_txt
from relay.message import parse
from relay.tracking.html import plan_html
from relay.tracking.render import Options, SignedBodies, Tracker, options_for
from relay.tracking.tokens import CLICK, OPEN, UNSUBSCRIBE, TokenCodec
from tests.test_dkim import _can_unshare, stub_dnsfunc

TRACK = "t.example.org"
MID = "5a3c1f0e-2b4d-4c6e-8f10-123456789abc"
TRACE = (b"Received", b" from client.test by relay.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n")
ALL = Options(links=True, opens=True, unsubscribe=True)

HTML = (
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
    '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\r\n'
    "<html><head><title>Hi</title><!--[if mso]><xml><o:OfficeDocumentSettings/></xml>"
    "<![endif]--></head>\r\n"
    "<body><table><tr><td>\r\n"
    '<a href="https://shop.example.com/p/1?utm=x&amp;not=2">one</a>\r\n'
    "<a HREF='http://shop.example.com/p/2'>two</a>\r\n"
    "<a href=https://shop.example.com/p/3>three</a>\r\n"
    '<a href="mailto:help@example.com">mail</a> <a href="tel:+15555550100">call</a>\r\n'
    '<a href="#top">top</a> <a href="/relative">rel</a>\r\n'
    '<a data-notrack href="https://shop.example.com/keep">keep</a>\r\n'
    f'<a href="https://{TRACK}/u/already">ours</a>\r\n'
    '<!-- <a href="https://shop.example.com/in-comment">c</a> -->\r\n'
    '<map name="m"><area href="https://shop.example.com/area" alt="a"></map>\r\n'
    "<![if !mso]><p>not outlook</p><![endif]>\r\n"
    "</td></tr></table></body></html>\r\n"
)
REWRITTEN = [
    "https://shop.example.com/p/1?utm=x&not=2",
    "http://shop.example.com/p/2",
    "https://shop.example.com/p/3",
    "https://shop.example.com/area",
]
KEPT = [
    "mailto:help@example.com",
    "tel:+15555550100",
    "#top",
    "/relative",
    "https://shop.example.com/keep",
    f"https://{TRACK}/u/already",
]
TEXT = "Hello, see https://shop.example.com/p/1 for details.\r\n"


def alternative(html: str = HTML, text: str = TEXT, extra_headers: str = "") -> bytes:
    return (
        "From: App <app@example.com>\r\nTo: r@example.net\r\nSubject: Offer\r\n"
        # What the Submitter adds when missing (OpenDKIM refuses a message without a Date).
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <offer-1@example.com>\r\n"
        f"{extra_headers}MIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
        "This is a MIME message.\r\n--b1\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        f"{text}--b1\r\n"
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        f"{html}--b1--\r\n"
    ).encode()


@dataclass
class Kit:
    tracker: Tracker
    codec: TokenCodec
    domain: DomainView
    settings: Settings
    nameserver: str
    txt: tuple[str, str]

    async def sign(
        self, data: bytes, recipients: list[str], options: Options = ALL, **kw: Any
    ) -> SignedBodies:
        return await self.tracker.sign(
            domain=kw.pop("domain", self.domain),
            message=parse(data),
            queue_id=MID,
            recipients=recipients,
            trace=TRACE,
            options=options,
            **kw,
        )

    async def verifies(self, signed: bytes) -> bool:
        return bool(
            await asyncio.to_thread(dkim.verify, signed, dnsfunc=stub_dnsfunc(self.nameserver))
        )


@pytest.fixture
async def kit(dns_stub: Any) -> AsyncIterator[Kit]:
    pair = await asyncio.to_thread(generate_key, 2048)
    key = load_pem_private_key(pair.private_pem.encode(), password=None)
    assert isinstance(key, RSAPrivateKey)
    domain = DomainView(1, 7, "example.com", "Enabled", "sel", key, {"UnsubscribeLink": 1})
    dns_stub.txt("sel._domainkey.example.com", dkim_txt(pair.public_b64))
    settings = Settings()
    settings.tracking.host = TRACK
    codec = TokenCodec(os.urandom(32))
    signer = DkimSigner(1)
    yield Kit(
        Tracker(settings, codec, signer),
        codec,
        domain,
        settings,
        dns_stub.nameserver,
        ("sel._domainkey.example.com", dkim_txt(pair.public_b64)),
    )
    signer.close()


# -- reading what came out -------------------------------------------------------------------


def mail(signed: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(signed, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def part(signed: bytes, ctype: str) -> email.message.EmailMessage:
    for p in mail(signed).walk():
        if p.get_content_type() == ctype:
            assert isinstance(p, email.message.EmailMessage)
            return p
    raise AssertionError(f"no {ctype} part")


def html_of(signed: bytes) -> str:
    content = part(signed, "text/html").get_content()
    assert isinstance(content, str)
    return content


def hrefs(html: str) -> list[str]:
    return [n.attributes.get("href") or "" for n in LexborHTMLParser(html).css("a, area")]


def read(kit: Kit, kind: bytes, url: str) -> Any:
    prefix = f"https://{TRACK}/{kind.decode()}/"
    assert url.startswith(prefix), url
    token = kit.codec.read(kind, url[len(prefix) :])
    assert token is not None, url
    return token


# -- the rules -------------------------------------------------------------------------------


async def test_links_pixel_footer_and_headers(kit: Kit) -> None:
    out = await kit.sign(alternative(), ["r@example.net"])
    assert out.variants is None  # one recipient: one body
    signed = out.body
    assert await kit.verifies(signed)
    html = html_of(signed)
    links = hrefs(html)
    clicks = [read(kit, CLICK, u) for u in links if u.startswith(f"https://{TRACK}/c/")]
    assert [c.url for c in clicks] == REWRITTEN
    assert [c.link_index for c in clicks] == [0, 1, 2, 3]
    assert {(c.message_id, c.recipient) for c in clicks} == {(MID, "r@example.net")}
    for kept in KEPT:
        assert kept in links
    assert "https://shop.example.com/in-comment" in html  # comments are not markup
    # The pixel is the last thing of the body, after the unsubscribe footer.
    tree = LexborHTMLParser(html)
    assert tree.body is not None
    last = [n for n in tree.body.iter() if n.tag != "-text"][-1]
    assert last.tag == "img"
    assert last.attributes["width"] == "1" and last.attributes["height"] == "1"
    assert read(kit, OPEN, last.attributes["src"] or "").recipient == "r@example.net"
    unsub = links[-1]
    assert read(kit, UNSUBSCRIBE, unsub).recipient == "r@example.net"
    # RFC 8058: exactly one of each header, the HTTPS URI, both signed.
    msg = mail(signed)
    assert msg.get_all("List-Unsubscribe") == [f"<{unsub}>"]
    assert msg.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    h_tag = dkim_tags(signed)[b"h"].split(b":")
    assert b"list-unsubscribe" in h_tag and b"list-unsubscribe-post" in h_tag
    # What tracking does not own stays byte for byte: doctype, conditionals, the text's link.
    assert html.startswith(HTML.split("\r\n")[0] + "\r\n<html><head><title>Hi</title><!--[if mso]>")
    assert "<![if !mso]><p>not outlook</p><![endif]>" in html
    text = part(signed, "text/plain").get_content()
    assert text.startswith(TEXT) and "https://shop.example.com/p/1 " in text
    assert text.rstrip().endswith(f"Unsubscribe: {unsub}")


def dkim_tags(signed: bytes) -> dict[bytes, bytes]:
    head = signed.split(b"\r\n\r\n", 1)[0]
    value = head.split(b"DKIM-Signature:", 1)[1].split(b"\r\nReceived:", 1)[0]
    flat = b"".join(value.split())
    return dict(tag.split(b"=", 1) for tag in flat.split(b";") if tag)


async def test_each_recipient_gets_its_own_signed_variant(kit: Kit) -> None:
    rcpts = ["a@example.net", "b@example.net", "c@example.org"]
    out = await kit.sign(alternative(), rcpts)
    assert out.variants is not None and sorted(out.variants) == rcpts[1:]
    bodies = {rcpts[0]: out.body, **out.variants}
    seen_urls: set[str] = set()
    for rcpt, signed in bodies.items():
        assert await kit.verifies(signed), rcpt
        links = hrefs(html_of(signed))
        mine = [u for u in links if u.startswith(f"https://{TRACK}/") and u not in KEPT]
        assert {read(kit, url.split("/")[3].encode(), url).recipient for url in mine} == {rcpt}
        assert not seen_urls & set(mine)
        seen_urls |= set(mine)


def kinds(html: str) -> set[str]:
    """Which tracking URLs (c, o, u) a body carries, the fixture's own link aside."""
    urls = [
        n.attributes.get("href") or n.attributes.get("src") or ""
        for n in LexborHTMLParser(html).css("a, area, img")
    ]
    return {u.split("/")[3] for u in urls if u.startswith(f"https://{TRACK}/") and u not in KEPT}


async def test_options_one_at_a_time(kit: Kit) -> None:
    data = alternative()
    links = await kit.sign(data, ["r@example.net"], Options(True, False, False))
    assert kinds(html_of(links.body)) == {"c"}
    assert mail(links.body)["List-Unsubscribe"] is None
    opens = await kit.sign(data, ["r@example.net"], Options(False, True, False))
    html = html_of(opens.body)
    assert kinds(html) == {"o"}
    assert hrefs(html)[:3] == REWRITTEN[:3]
    unsub = await kit.sign(data, ["r@example.net"], Options(False, False, True))
    assert mail(unsub.body)["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert kinds(html_of(unsub.body)) == {"u"}
    for out in (links, opens, unsub):
        assert await kit.verifies(out.body)
    # All off: signed once, the message as it came.
    none = await kit.sign(data, ["a@example.net", "b@example.net"], Options(False, False, False))
    assert none.variants is None
    assert none.body.endswith(data.split(b"\r\n\r\n", 1)[1])
    assert await kit.verifies(none.body)


def test_options_come_from_the_domain_and_the_send_api(kit: Kit) -> None:
    d = replace(kit.domain, options={})
    assert options_for(d) == Options(True, True, False)  # the documents' defaults
    d = replace(kit.domain, options={"LinkTracking": 0, "OpenTracking": 1, "UnsubscribeLink": 1})
    assert options_for(d) == Options(False, True, True)
    assert options_for(d, track_links=True, track_opens=False) == Options(True, False, True)


SMIME = (
    b"From: app@example.com\r\nTo: r@example.net\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAxggFAMIIBPAIBADAkMBYxFDASBgNV\r\n"
)
SIGNED = (
    b"From: app@example.com\r\nTo: r@example.net\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;'
    b' boundary="s1"\r\n\r\n--s1\r\nContent-Type: text/html\r\n\r\n'
    b'<a href="https://shop.example.com/">x</a>\r\n--s1\r\n'
    b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n\r\nMIIB\r\n--s1--\r\n"
)
PGP_ENCRYPTED = (
    b"From: app@example.com\r\nTo: r@example.net\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="e"\r\n'
    b"\r\n--e\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--e\r\n"
    b"Content-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\nhQ\r\n"
    b"-----END PGP MESSAGE-----\r\n--e--\r\n"
)
INLINE_PGP = (
    b"From: app@example.com\r\nTo: r@example.net\r\nSubject: s\r\n\r\n"
    b"-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA256\r\n\r\nsee https://shop.example.com/\r\n"
    b"-----BEGIN PGP SIGNATURE-----\r\nabc\r\n-----END PGP SIGNATURE-----\r\n"
)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            alternative(extra_headers="DKIM-Signature: v=1; d=other.example; s=x; b=abc\r\n"),
            id="dkim-signed-by-someone-else",
        ),
        pytest.param(
            alternative(extra_headers="ARC-Seal: i=1; a=rsa-sha256; d=fwd.example; b=x\r\n"),
            id="arc-sealed",
        ),
        pytest.param(SIGNED, id="smime-multipart-signed"),
        pytest.param(SMIME, id="smime-pkcs7-mime"),
        pytest.param(PGP_ENCRYPTED, id="pgp-encrypted"),
        pytest.param(INLINE_PGP, id="inline-pgp"),
    ],
)
async def test_signed_or_encrypted_messages_are_left_as_they_came(kit: Kit, data: bytes) -> None:
    out = await kit.sign(data, ["a@example.net", "b@example.net"])
    assert out.variants is None
    assert out.body.endswith(data.split(b"\r\n\r\n", 1)[1])
    assert mail(out.body)["List-Unsubscribe"] is None


async def test_base64_part_in_another_charset(kit: Kit) -> None:
    import base64

    html = '<p>Caf\xe9 <a href="https://shop.example.com/caf\xe9">menu</a></p>'
    encoded = base64.encodebytes(html.encode("iso-8859-1")).replace(b"\n", b"\r\n")
    data = (
        b"From: app@example.com\r\nTo: r@example.net\r\nSubject: b64\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\n'
        b"Content-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded
        + b"--m\r\nContent-Type: text/html; name=attached.html\r\n"
        b"Content-Disposition: attachment; filename=attached.html\r\n\r\n"
        b'<a href="https://shop.example.com/attachment">x</a>\r\n--m--\r\n'
    )
    out = await kit.sign(data, ["r@example.net"])
    assert await kit.verifies(out.body)
    html_part = part(out.body, "text/html")
    assert html_part["Content-Transfer-Encoding"] == "base64"
    assert html_part.get_content_charset() == "iso-8859-1"
    text = html_part.get_content()
    assert text.startswith("<p>Caf\xe9 <a href=")
    (link, *_rest) = hrefs(text)
    assert read(kit, CLICK, link).url == "https://shop.example.com/caf%C3%A9"
    # The attachment is not the message's HTML: untouched.
    assert b'<a href="https://shop.example.com/attachment">x</a>' in out.body


async def test_short_lines_keep_their_encoding_even_for_the_longest_token(kit: Kit) -> None:
    """A 7bit part whose rewritten lines fit in 998 octets whatever the recipient stays 7bit
    (no quoted-printable pass, a shorter body); the bound holds for a 250-octet address."""
    data = (
        "From: app@example.com\r\nTo: r@example.net\r\nSubject: one\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        + "".join(f'<p><a href="https://shop.example.com/{i}">{i}</a></p>\r\n' for i in range(5))
    ).encode()
    longest = "r" * 235 + "@example.net" + "x" * 3
    out = await kit.sign(data, ["r@example.net", longest])
    for body in (out.body, *(out.variants or {}).values()):
        assert await kit.verifies(body)
        msg = mail(body)
        assert msg["Content-Transfer-Encoding"] == "7bit"
        assert max(len(line) for line in body.split(b"\r\n")) <= 998
        clicks = [read(kit, CLICK, u) for u in hrefs(html_of(body))[:5]]
        assert [c.url for c in clicks] == [f"https://shop.example.com/{i}" for i in range(5)]
    assert (
        out.variants is not None
        and read(kit, CLICK, hrefs(html_of(out.variants[longest]))[0]).recipient == longest
    )


async def test_single_part_7bit_html_becomes_quoted_printable(kit: Kit) -> None:
    long_line = "<p>" + " ".join(
        f'<a href="https://shop.example.com/{i}">{i}</a>' for i in range(12)
    )
    data = (
        "From: app@example.com\r\nTo: r@example.net\r\nSubject: one\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=us-ascii\r\n\r\n"
        f"<html><body>{long_line}</p></body></html>\r\n"
    ).encode()
    out = await kit.sign(data, ["r@example.net"])
    assert await kit.verifies(out.body)
    msg = mail(out.body)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert max(len(line) for line in out.body.split(b"\r\n")) <= 998
    clicks = [read(kit, CLICK, u) for u in hrefs(html_of(out.body))[:12]]
    assert [c.url for c in clicks] == [f"https://shop.example.com/{i}" for i in range(12)]


async def test_plain_text_message_gets_only_the_footer_and_headers(kit: Kit) -> None:
    data = b"From: app@example.com\r\nTo: r@example.net\r\nSubject: t\r\n\r\nSee https://x.example/\r\n"
    out = await kit.sign(data, ["r@example.net"])
    assert await kit.verifies(out.body)
    body = out.body.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b"See https://x.example/\r\n\r\nUnsubscribe: https://t.example.org/u/")
    assert b"Content-Transfer-Encoding" not in out.body
    # Without UnsubscribeLink there is nothing to do in a text-only message.
    plain = await kit.sign(data, ["a@example.net", "b@example.net"], Options(True, True, False))
    assert plain.variants is None and plain.body.endswith(b"\r\n\r\nSee https://x.example/\r\n")


async def test_mail_without_html_is_not_parsed_for_links_and_opens(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_parsing(*_: Any) -> Any:
        raise AssertionError("parsed")

    links_opens = Options(True, True, False)
    text_only = alternative().replace(b"text/html", b"text/x-other")
    single = b"From: app@example.com\r\nContent-Type: text/plain\r\n\r\n<a href='https://x/'>\r\n"
    with monkeypatch.context() as m:
        m.setattr("relay.tracking.mime.parse", no_parsing)
        for data in (text_only, single):
            out = await kit.sign(data, ["a@example.net", "b@example.net"], links_opens)
            assert out.variants is None and await kit.verifies(out.body)
    # Any HTML part at all is planned: at the top, in a multipart, whatever the spelling.
    spelled = alternative().replace(b"Content-Type: text/html", b"Content-Type: TEXT/Html")
    for data in (alternative(), spelled, single.replace(b"text/plain", b"text/html")):
        out = await kit.sign(data, ["a@example.net"], links_opens)
        assert f"https://{TRACK}/o/" in mail(out.body).get_body(("html",)).get_content()


async def test_a_message_with_its_own_list_unsubscribe_keeps_it(kit: Kit) -> None:
    own = "List-Unsubscribe: <https://lists.example.com/u/1>\r\n"
    out = await kit.sign(alternative(extra_headers=own), ["r@example.net"])
    msg = mail(out.body)
    assert msg.get_all("List-Unsubscribe") == ["<https://lists.example.com/u/1>"]
    assert msg["List-Unsubscribe-Post"] is None
    assert kinds(html_of(out.body)) == {"c", "o"}
    assert await kit.verifies(out.body)


async def test_which_host(kit: Kit) -> None:
    data = alternative()
    unverified = replace(kit.domain, verified_hosts=frozenset())
    kit.settings.tracking.host = ""
    out = await kit.sign(data, ["a@example.net", "b@example.net"], domain=unverified)
    assert out.variants is None and b"/c/" not in out.body  # no usable host: not tracked
    verified = replace(kit.domain, verified_hosts=frozenset({"track-mail.example.com"}))
    out = await kit.sign(data, ["r@example.net"], domain=verified)
    assert "https://track-mail.example.com/c/" in html_of(out.body)
    disabled = replace(
        kit.domain,
        options={"TrackPrefixDisabled": True, "CustomSubdomain": "bounce"},
        verified_hosts=frozenset({"bounce.example.com"}),
    )
    out = await kit.sign(data, ["r@example.net"], domain=disabled)
    assert "https://bounce.example.com/c/" in html_of(out.body)
    kit.settings.tracking.host = TRACK
    kit.settings.tracking.scheme = "http"
    out = await kit.sign(data, ["r@example.net"], domain=unverified)
    assert f"http://{TRACK}/c/" in html_of(out.body)


async def test_untrackable_recipients_share_an_untracked_body(kit: Kit) -> None:
    long = "x" * 250 + "@example.net"
    out = await kit.sign(alternative(), ["a@example.net", long])
    assert out.variants is not None and list(out.variants) == ["a@example.net"]
    assert out.body.endswith(alternative().split(b"\r\n\r\n", 1)[1])
    assert await kit.verifies(out.body)
    assert await kit.verifies(out.variants["a@example.net"])
    alone = await kit.sign(alternative(), [long])
    assert alone.variants is None and alone.body.endswith(alternative().split(b"\r\n\r\n", 1)[1])


async def test_a_large_message_is_planned_off_the_loop(kit: Kit) -> None:
    attachment = b"QUJD" * (80 * 1024)
    data = alternative().replace(
        b"--b1--\r\n",
        b"--b1--\r\n",
    )
    data = (
        b"From: app@example.com\r\nTo: r@example.net\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n--outer\r\n'
        + data.split(b"MIME-Version: 1.0\r\n", 1)[1]
        + b"\r\n--outer\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + b"\r\n".join(attachment[i : i + 76] for i in range(0, len(attachment), 76))
        + b"\r\n--outer--\r\n"
    )
    assert len(data) > 256 * 1024
    out = await kit.sign(data, ["a@example.net", "b@example.net"])
    assert out.variants is not None
    for signed in (out.body, out.variants["b@example.net"]):
        assert await kit.verifies(signed)
        assert len(hrefs(html_of(signed))) == len(REWRITTEN) + len(KEPT) + 1
        assert attachment[:76] + b"\r\n" in signed


# -- the HTML rules on their own ---------------------------------------------------------------


def test_html_href_values_follow_html5_not_pythons_unescape() -> None:
    plan = plan_html('<a href="https://e.example/?a=1&not=2&amp;copy=3&lang=en">x</a>')
    assert [link.url for link in plan.links] == ["https://e.example/?a=1&not=2&copy=3&lang=en"]


def test_html_that_the_parsers_read_differently_keeps_its_links() -> None:
    # A <title> is text in HTML5; Python's tokenizer sees a tag in it. Rewrite nothing.
    plan = plan_html('<title><a href="https://e.example/t"></title><a href="https://e.example/">')
    assert plan.links == [] and plan.links_skipped


def test_html_insertion_point() -> None:
    assert plan_html("<p>x</p></BODY>\r\n</html>").insert_at == len("<p>x</p>")
    assert plan_html("<p>x</p></html>").insert_at == len("<p>x</p>")
    assert plan_html("<p>x</p>").insert_at == len("<p>x</p>")
    trailing = "<p>x</p></body></html>\r\n<!-- x -->"
    assert plan_html(trailing).insert_at == len(trailing)
    # A </body> inside a comment or a script is not the end of the body; after one that is
    # followed by more content, the end of the text is (HTML5 puts what follows into the body).
    text = "<p>x</p><!-- </body> --><script>'</body>'</script>"
    assert plan_html(text).insert_at == len(text)


def test_urls_are_made_safe_for_a_location_header() -> None:
    long = "https://e.example/" + "x" * 2100
    plan = plan_html(
        '<a href=" https://e.example/a b\tc\u00e9 ">x</a><a href="https:///x">y</a>'
        f'<a href="{long}">too long for a request line once in a token</a>'
    )
    assert [link.url for link in plan.links] == ["https://e.example/a%20bc%C3%A9"]


# -- OpenDKIM ------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not _can_unshare(),
    reason="needs root, unshare and opendkim-testmsg (apt-get install opendkim-tools)",
)
async def test_variants_verify_with_opendkim(kit: Kit, tmp_path: Path) -> None:
    out = await kit.sign(alternative(), ["a@example.net", "b@example.net"])
    assert out.variants is not None
    root = Path(__file__).parent.parent
    for name, signed in (("a", out.body), ("b", out.variants["b@example.net"])):
        path = tmp_path / f"{name}-{uuid.uuid4().hex}.eml"
        path.write_bytes(signed)
        cmd = ["unshare", "--net", "--mount", sys.executable, "-m", "tests.opendkim_verify"]
        done = await asyncio.to_thread(
            subprocess.run,
            [*cmd, str(path), *kit.txt],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr


async def test_the_h_tag_never_breaks_inside_a_header_name(kit: Kit) -> None:
    """Long h= lists (List-Unsubscribe and List-Unsubscribe-Post make them longer) fold only
    between names: whatever the domain and selector lengths, every name in h= is a real one."""
    from relay.dkim import prepare_signature

    m = parse(alternative(extra_headers="Reply-To: r@example.com\r\nCc: c@example.net\r\n"))
    headers = [*m.headers, [b"List-Unsubscribe", b" <https://x/u/1>\r\n"]]
    headers.append([b"List-Unsubscribe-Post", b" List-Unsubscribe=One-Click\r\n"])
    for pad in range(40):
        pending = prepare_signature(headers, m.body, "d" * (1 + pad) + ".example", "s" * 8, 1)
        value = dict(pending.fields)[b"h"]
        from dkim import fold

        folded = fold(b"; ".join(b"=".join(f) for f in pending.fields), namelen=14)
        h = folded.split(b"h=", 1)[1].split(b";", 1)[0]
        names = [n.strip() for n in h.replace(b"\r\n", b"").split(b":")]
        assert names == [n.strip() for n in value.split(b":")]
        assert all(b" " not in n and b"\t" not in n for n in names), folded


def test_the_fast_scan_is_used_only_when_it_finds_exactly_the_links(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from relay.tracking import html as tracking_html

    calls: list[str] = []
    tokenize = tracking_html._tokenize
    monkeypatch.setattr(
        tracking_html, "_tokenize", lambda text: calls.append(text) or tokenize(text)
    )
    simple = "<p><a href=\"https://e.example/1\">1</a> <A\nHREF='https://e.example/2'>2</A></p>"
    assert [x.url for x in plan_html(simple).links] == [
        "https://e.example/1",
        "https://e.example/2",
    ]
    assert calls == []
    commented = '<!-- <a href="https://e.example/old"> --><a href="https://e.example/new">n</a>'
    plan = plan_html(commented)
    assert [x.url for x in plan.links] == ["https://e.example/new"]
    assert commented[plan.links[0].start : plan.links[0].end] == "https://e.example/new"
    assert calls == [commented]


def test_a_part_planned_again_reuses_its_plan_and_only_then() -> None:
    hosts = frozenset({TRACK})
    first = plan_html(HTML, skip_hosts=hosts)
    assert [link.url for link in first.links] == REWRITTEN
    assert plan_html(HTML, skip_hosts=hosts) is first  # bulk mail: one body, many messages
    assert plan_html(HTML, links=False, skip_hosts=hosts).links == []
    changed = plan_html(HTML.replace("/p/2", "/p/9"), skip_hosts=hosts)
    assert changed is not first and changed.links[1].url == "http://shop.example.com/p/9"
    # Large parts are planned every time (the cache holds small ones only).
    big = HTML + "<!-- " + "x" * 40000 + " -->"
    assert plan_html(big, skip_hosts=hosts) is not plan_html(big, skip_hosts=hosts)


async def test_one_body_in_many_messages_is_planned_once(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = '<html><body><a href="https://shop.example.com/1">one</a></body></html>\r\n'

    def message(mid: str, extra: str = "", ctype: str = "text/html") -> bytes:
        return (
            f"From: app@example.com\r\nTo: r@example.net\r\nSubject: bulk\r\n"
            f"Message-ID: <{mid}@example.com>\r\n{extra}MIME-Version: 1.0\r\n"
            f"Content-Type: {ctype}; charset=us-ascii\r\n\r\n{body}"
        ).encode()

    first = await kit.sign(message("m1"), ["r@example.net"])
    planned = mime_parse_calls = 0

    def counting_parse(*args: Any) -> Any:
        nonlocal mime_parse_calls
        mime_parse_calls += 1
        return real_parse(*args)

    from relay.tracking import mime

    real_parse = mime.parse
    monkeypatch.setattr(mime, "parse", counting_parse)
    second = await kit.sign(message("m2"), ["r@example.net"])
    assert mime_parse_calls == planned  # the plan of "m1" served "m2"
    for out, mid in ((first, "m1"), (second, "m2")):
        assert await kit.verifies(out.body)
        msg = mail(out.body)
        # The message's own headers, once; its short lines keep their encoding (none given).
        assert msg["Message-ID"] == f"<{mid}@example.com>"
        assert msg.get_all("Content-Transfer-Encoding") is None
        (click,) = [read(kit, CLICK, u) for u in hrefs(html_of(out.body))[:1]]
        assert click.url == "https://shop.example.com/1"
    # What the plan depends on besides the body is part of the key: another type is planned
    # on its own (nothing to do in text/plain), and a message signed by someone else is left
    # alone whatever was planned for the same body.
    plain = await kit.sign(message("m3", ctype="text/plain"), ["r@example.net"], ALL)
    assert mime_parse_calls == 1 and b"shop.example.com/1" in plain.body
    signed = message("m4", extra="DKIM-Signature: v=1; d=other.example; b=x\r\n")
    kept = await kit.sign(signed, ["r@example.net"])
    assert kept.variants is None and kept.body.endswith(body.encode())
