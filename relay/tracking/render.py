"""Per-recipient tracked, signed bodies: what the Submitter stores for a message.

``Tracker.sign`` is the one call: it parses the message once, renders each recipient's body
(own click, open and unsubscribe tokens) from the template, and DKIM-signs each body (the RSA
work runs in the signer's thread). A message without tracking, or one tracking must not
change, is signed once, exactly as before.

Tracking never costs a message: anything unexpected while planning is logged and the message
goes out untracked.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from relay import metrics
from relay.config import Settings
from relay.directory import DomainView
from relay.dkim import DkimSigner
from relay.message import Headers, ParsedMessage, header
from relay.services import Services
from relay.tracking import html as html_plan
from relay.tracking import mime
from relay.tracking.hosts import tracking_base
from relay.tracking.keys import load_codec
from relay.tracking.tokens import (
    CLICK,
    MAX_PREFIX_BYTES,
    OPEN,
    UNSUBSCRIBE,
    TokenCodec,
    click_suffix,
    max_token_chars,
)

log = structlog.get_logger("relay.tracking")

# RFC 8058 3.1: the one key/value pair of the POST the mailbox provider sends.
ONE_CLICK = "List-Unsubscribe=One-Click"
# Bodies this large are planned and rendered in a thread, so the loop keeps serving sessions.
_LARGE = 256 * 1024
# Rendering many recipients yields to the loop this often (seconds of work).
_SLICE = 0.005
_MAX_LINKS = 0xFFFF
_INSERT = -1  # slot of the footer and pixel (HTML) or the footer line (text)
# Plans kept for bodies up to this size (so at most about _CACHED_PLANS * 2 * _CACHED_BODY
# bytes: the body in the key, the template pieces in the plan).
_CACHED_PLANS = 32
_CACHED_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class Options:
    """What to do to a message: the domain's options, with the send API's overrides."""

    links: bool
    opens: bool
    unsubscribe: bool

    @property
    def any(self) -> bool:
        return self.links or self.opens or self.unsubscribe


def options_for(
    domain: DomainView, *, track_links: bool | None = None, track_opens: bool | None = None
) -> Options:
    """The domain's LinkTracking / OpenTracking / UnsubscribeLink (defaults 1, 1, 0 as the
    documents give them), TrackLinks / TrackOpens overriding the first two when given."""
    o = domain.options
    return Options(
        links=bool(o.get("LinkTracking", 1)) if track_links is None else track_links,
        opens=bool(o.get("OpenTracking", 1)) if track_opens is None else track_opens,
        unsubscribe=bool(o.get("UnsubscribeLink", 0)),
    )


@dataclass(slots=True)
class SignedBodies:
    """``body`` is the signed message of every recipient that has no entry in ``variants``.

    With tracking, every recipient gets its own body; the first recipient's is ``body`` (so a
    message to one recipient stores one body) and the others are in ``variants``. Recipients
    that cannot be tracked (an address over 255 bytes) share an untracked ``body``.
    """

    body: bytes
    variants: dict[str, bytes] | None = None


@dataclass(slots=True)
class _Part:
    html: bool
    segments: list[str]  # constant text between the slots
    slots: list[int]  # a link index, or _INSERT
    charset: str
    cte: str


@dataclass(slots=True)
class _Plan:
    base: str
    template: mime.BodyTemplate
    parts: list[_Part]
    links: list[str]
    opens: bool
    unsubscribe: bool
    footer_text: str
    counts: dict[str, int] = field(default_factory=dict)
    # Each link's click-token plaintext after the recipient's prefix (index and URL).
    suffixes: list[bytes] = field(default_factory=list)
    # (new, old) transfer encoding of a changed single-part message: a header of the message.
    top_level: tuple[str, str] | None = None


class Tracker:
    def __init__(self, settings: Settings, codec: TokenCodec, signer: DkimSigner) -> None:
        self.settings = settings
        self.codec = codec
        self.signer = signer
        # Recent plans by what they depend on (see _plan_key): bulk mail sends one body to
        # many recipients, often one transaction each, and planning (MIME parsing, HTML
        # planning, the body template) is most of a tracked message's cost.
        self._plans: OrderedDict[tuple[Any, ...], _Plan] = OrderedDict()

    @classmethod
    async def create(cls, services: Services, signer: DkimSigner) -> Tracker:
        return cls(services.settings, await load_codec(services), signer)

    def may_track(self, domain: DomainView) -> bool:
        """False when no message of ``domain`` can be tracked, because there is no host for
        its links (docs/tracking.md, "Which host"): neither ``tracking.host`` nor a verified
        record of the domain. Two attribute reads, so a node without tracking hosts pays
        nothing per message; ``sign`` makes the exact choice."""
        return bool(self.settings.tracking.host or domain.verified_hosts)

    async def sign(
        self,
        *,
        domain: DomainView,
        message: ParsedMessage,
        queue_id: str,
        recipients: list[str],
        trace: tuple[bytes, bytes],
        options: Options | None = None,
        now: float | None = None,
    ) -> SignedBodies:
        """The signed bodies of a message; ``trace`` (the Received header) goes above the
        signature, outside it. ``options`` defaults to the domain's (``options_for``)."""
        options = options if options is not None else options_for(domain)
        plan = None
        if options.any and recipients:
            started = time.perf_counter()
            plan = await self._plan_safely(domain, message, options)
            metrics.TRACKING_PLAN_SECONDS.observe(time.perf_counter() - started)
        if plan is None:
            return SignedBodies(await self._sign(domain, message.headers, message.body, trace))
        return await self._sign_each(domain, message, plan, queue_id, recipients, trace, now)

    # -- planning (once per message) ---------------------------------------------------------

    async def _plan_safely(
        self, domain: DomainView, message: ParsedMessage, options: Options
    ) -> _Plan | None:
        base = tracking_base(domain, self.settings)
        if base is None:
            metrics.TRACKING_MESSAGES.labels("no_host").inc()
            return None
        try:
            if len(message.body) > _LARGE:
                plan = await asyncio.to_thread(self._plan, base, message, options)
            else:
                plan = self._plan(base, message, options)
        except mime.Untouchable as exc:
            metrics.TRACKING_MESSAGES.labels(exc.reason).inc()
            return None
        except Exception:
            log.exception("tracking skipped: could not plan the message", domain=domain.name)
            metrics.TRACKING_MESSAGES.labels("error").inc()
            return None
        metrics.TRACKING_MESSAGES.labels("tracked" if plan is not None else "unchanged").inc()
        return plan

    def _plan(self, base: str, message: ParsedMessage, options: Options) -> _Plan | None:
        unsubscribe = options.unsubscribe and not message.values(b"list-unsubscribe")
        if not unsubscribe and not _may_have_html(message):
            return None  # links and the pixel go into HTML only: nothing to parse
        mime.check_headers(message)
        footer = self.settings.tracking.unsubscribe_text
        key = None
        if len(message.body) <= _CACHED_BODY:
            key = (
                message.body,
                tuple(tuple(message.values(name)) for name in mime.STRUCTURE_HEADERS),
                base,
                options.links,
                options.opens,
                unsubscribe,
                footer,
            )
            cached = self._plans.get(key)
            if cached is not None:
                self._plans.move_to_end(key)
                headers = mime.top_level_headers(message.headers, cached.top_level)
                return replace(cached, template=replace(cached.template, headers=headers))
        plan = self._plan_message(base, message, options, unsubscribe, footer)
        if plan is not None and key is not None:
            self._plans[key] = plan
            if len(self._plans) > _CACHED_PLANS:
                self._plans.popitem(last=False)
        return plan

    def _plan_message(
        self, base: str, message: ParsedMessage, options: Options, unsubscribe: bool, footer: str
    ) -> _Plan | None:
        root, parts = mime.parse(message)
        skip_hosts = frozenset({base.partition("://")[2].partition(":")[0]})
        links: list[str] = []
        planned: list[_Part] = []
        changed: list[tuple[mime.TextPart, str]] = []
        first_html = first_text = True
        worst = _Worst(base, links, footer, options.opens, unsubscribe)  # links: filled below
        for part in parts:
            insert = False
            if part.html:
                insert = first_html and (options.opens or unsubscribe)
                first_html = False
            else:
                insert = first_text and unsubscribe
                first_text = False
            cuts: list[tuple[int, int]] = []
            slots: list[int] = []
            if part.html and (options.links or insert):
                hp = html_plan.plan_html(part.text, links=options.links, skip_hosts=skip_hosts)
                for link in hp.links:
                    if len(links) >= _MAX_LINKS:
                        break
                    cuts.append((link.start, link.end))
                    slots.append(len(links))
                    links.append(link.url)
                insert_at = hp.insert_at
            else:
                insert_at = len(part.text)
            if insert:
                # Links sit inside tags, the insertion point before one: never the same spot.
                pos = next((i for i, (s, _) in enumerate(cuts) if s >= insert_at), len(cuts))
                cuts.insert(pos, (insert_at, insert_at))
                slots.insert(pos, _INSERT)
            if not slots:
                continue
            segments = html_plan.segments(part.text, cuts)
            rewrites = any(s != _INSERT for s in slots)
            if rewrites and _fits_as_it_is(part, segments, slots, worst):
                cte: str | None = part.cte
            else:
                cte = _output_cte(part, rewrites=rewrites, extra=footer)
            if cte is None:
                continue
            changed.append((part, cte))
            planned.append(_Part(part.html, segments, slots, part.charset, cte))
        if not changed and not unsubscribe:
            return None
        tpl = mime.template(message, root, changed) if changed else None
        return _Plan(
            base=base,
            template=tpl or mime.BodyTemplate([message.body], [list(h) for h in message.headers]),
            top_level=mime.top_level_change(changed),
            parts=planned,
            links=links,
            opens=options.opens,
            unsubscribe=unsubscribe,
            footer_text=footer,
            suffixes=[click_suffix(i, url) for i, url in enumerate(links)],
        )

    # -- rendering and signing (once per recipient) ------------------------------------------

    async def _sign_each(
        self,
        domain: DomainView,
        message: ParsedMessage,
        plan: _Plan,
        queue_id: str,
        recipients: list[str],
        trace: tuple[bytes, bytes],
        now: float | None,
    ) -> SignedBodies:
        minted = int(now if now is not None else time.time())
        large = len(message.body) > _LARGE
        rendered: dict[str, tuple[Headers, bytes]] = {}
        untracked: list[str] = []
        slice_start = time.perf_counter()
        for rcpt in recipients:
            if rcpt in rendered:
                continue
            prefix = self.codec.prefix(queue_id, rcpt, minted)
            if prefix is None:
                untracked.append(rcpt)
                continue
            if large:
                rendered[rcpt] = await asyncio.to_thread(self._render, plan, prefix)
            else:
                rendered[rcpt] = self._render(plan, prefix)
                if time.perf_counter() - slice_start > _SLICE:
                    await asyncio.sleep(0)
                    slice_start = time.perf_counter()
        jobs: list[Any] = [self._sign(domain, h, b, trace) for h, b in rendered.values()]
        if untracked:
            jobs.append(self._sign(domain, message.headers, message.body, trace))
        # One body (the common case) needs no task of its own.
        signed = [await jobs[0]] if len(jobs) == 1 else await asyncio.gather(*jobs)
        metrics.TRACKING_VARIANTS.inc(len(rendered))
        bodies = dict(zip(rendered, signed, strict=False))
        if untracked:
            return SignedBodies(signed[-1], bodies or None)
        first = next(iter(bodies))
        body = bodies.pop(first)
        return SignedBodies(body, bodies or None)

    def _render(self, plan: _Plan, prefix: bytes) -> tuple[Headers, bytes]:
        codec, base, suffixes = self.codec, plan.base, plan.suffixes
        click = f"{base}/c/"
        unsub = f"{base}/u/{codec.seal(UNSUBSCRIBE, prefix)}" if plan.unsubscribe else ""
        pixel = f"{base}/o/{codec.seal(OPEN, prefix)}" if plan.opens else ""
        pieces = [plan.template.pieces[0]]
        for part, after in zip(plan.parts, plan.template.pieces[1:], strict=True):
            out: list[str] = []
            for seg, slot in zip(part.segments, part.slots, strict=False):
                out.append(seg)
                if slot == _INSERT:
                    if part.html:
                        out.append(_html_insert(unsub, pixel, plan.footer_text))
                    else:
                        out.append(_text_insert(seg, unsub, plan.footer_text))
                else:
                    out.append(click + codec.seal(CLICK, prefix + suffixes[slot]))
            out.append(part.segments[-1])
            pieces.append(mime.encode("".join(out).encode(part.charset), part.cte))
            pieces.append(after)
        headers = plan.template.headers
        if plan.unsubscribe:
            # RFC 8058 3.1: exactly one of each; both are in the DKIM h= list (relay/dkim.py).
            headers = [
                *headers,
                list(header("List-Unsubscribe", f"<{unsub}>")),
                list(header("List-Unsubscribe-Post", ONE_CLICK)),
            ]
        return headers, b"".join(pieces)

    async def _sign(
        self, domain: DomainView, headers: Headers, body: bytes, trace: tuple[bytes, bytes]
    ) -> bytes:
        started = time.perf_counter()
        signature = await self.signer.sign(
            domain.dkim_key, headers, body, domain.name, domain.dkim_selector
        )
        metrics.DKIM_SIGN_SECONDS.observe(time.perf_counter() - started)
        return ParsedMessage(headers, body).to_bytes(prepend=[signature, trace])


_HTML_TYPE = re.compile(rb"text\s*/\s*html", re.IGNORECASE)


def _may_have_html(message: ParsedMessage) -> bool:
    """False when the message certainly has no HTML part: a single part that is not
    text/html (no Content-Type is text/plain, RFC 2045 5.2), or a multipart body that never
    says text/html. Plain-text mail with link and open tracking on is then signed without
    being parsed."""
    ctype = message.values(b"content-type")
    if not ctype:
        return False
    main = ctype[0].split(b";", 1)[0].strip().lower()
    if not main.startswith(b"multipart/"):
        return _HTML_TYPE.fullmatch(main) is not None
    return _HTML_TYPE.search(message.body) is not None


def _output_cte(part: mime.TextPart, *, rewrites: bool, extra: str) -> str | None:
    """The transfer encoding of the part's new content. Base64 and quoted-printable stay; a
    part whose links are rewritten becomes quoted-printable (tracking URLs lengthen lines,
    RFC 5322 2.1.1 caps them at 998); an insertion into a 7bit/8bit part keeps it as it is
    when what is inserted fits (its own short lines, ASCII for 7bit)."""
    if part.cte in ("base64", "quoted-printable"):
        return part.cte
    if not rewrites and (extra.isascii() or part.cte in ("8bit", "binary")):
        return part.cte
    if part.top_level and part.node.get("Content-Type") is None:
        return None  # not a MIME message: no encoding can be declared without more headers
    return "quoted-printable"


# RFC 5322 2.1.1: at most 998 octets per line, without its CRLF.
_LINE_OCTETS = 998


@dataclass(slots=True)
class _Worst:
    """What a plan puts into a part, for its longest possible rendering."""

    base: str
    links: list[str]
    footer: str
    opens: bool
    unsubscribe: bool


def _fits_as_it_is(
    part: mime.TextPart, segments: list[str], slots: list[int], worst: _Worst
) -> bool:
    """Whether an HTML part in 7bit or 8bit whose links are rewritten can keep its encoding:
    rendered with the longest token any recipient can get, every line still fits in 998
    octets and a 7bit part stays ASCII. Then the part is not written quoted-printable, which
    costs a pass over it per recipient and makes the body longer still."""
    if not part.html or part.cte not in ("", "7bit", "8bit"):
        return False
    longest = "A" * max_token_chars(MAX_PREFIX_BYTES)
    unsub = f"{worst.base}/u/{longest}" if worst.unsubscribe else ""
    pixel = f"{worst.base}/o/{longest}" if worst.opens else ""
    out: list[str] = []
    for seg, slot in zip(segments, slots, strict=False):
        out.append(seg)
        if slot == _INSERT:
            out.append(_html_insert(unsub, pixel, worst.footer))
        else:
            plain = MAX_PREFIX_BYTES + len(click_suffix(slot, worst.links[slot]))
            out.append(f"{worst.base}/c/" + "A" * max_token_chars(plain))
    out.append(segments[-1])
    text = "".join(out)
    if part.cte in ("", "7bit") and not text.isascii():
        return False
    try:
        data = text.encode(part.charset)
    except (LookupError, UnicodeError):
        return False
    return all(len(line.rstrip(b"\r")) <= _LINE_OCTETS for line in data.split(b"\n"))


def _html_insert(unsub: str, pixel: str, text: str) -> str:
    out = "\r\n"
    if unsub:
        out += (
            '<p style="margin:16px 0;text-align:center;font-size:12px">'
            f'<a href="{unsub}">{html_plan.escape_text(text)}</a></p>\r\n'
        )
    if pixel:
        out += (
            f'<img src="{pixel}" width="1" height="1" alt="" '
            'style="display:block;width:1px;height:1px;border:0">\r\n'
        )
    return out


def _text_insert(before: str, unsub: str, text: str) -> str:
    lead = "\r\n" if before.endswith("\n") else "\r\n\r\n"
    return f"{lead}{text}: {unsub}\r\n"
