"""Where to change an HTML part: the href values to rewrite, where the pixel and footer go.

The part is changed by splicing at those positions, never by re-serializing a parsed tree: a
serializer (lxml, Lexbor, html5lib) rewrites the whole document, dropping a DOCTYPE's public
identifier, turning Outlook's ``<![if !mso]>`` conditionals into plain comments, adding
``<tbody>``... all of which changes how mail clients render it. Two parsers share the work:

- Lexbor (selectolax), an HTML5 parser, says which ``<a>``/``<area>`` elements a browser sees
  and what their href values are (HTML5's character-reference rules in attributes, e.g.
  ``?a=1&not=2`` is not ``?a=1¬=2``);
- the standard library's tokenizer (``html.parser``), which reports where each start tag is in
  the source, says where those values are.

Both must list the same links in the same order; where they disagree (markup so broken that
the tokenizers split it differently), no link of that part is rewritten.
"""

from __future__ import annotations

import html
import html.parser
import re
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from selectolax.lexbor import LexborHTMLParser

from relay.tracking.tokens import MAX_URL_CHARS

# The attribute that leaves a link alone: <a href="..." data-notrack>.
NOTRACK_ATTRIBUTE = "data-notrack"

_LINK_TAGS = ("a", "area")
# WHATWG URL parsing strips leading and trailing C0 controls and spaces, and drops tabs and
# newlines anywhere.
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))
_TAB_NEWLINE = re.compile(r"[\t\n\r]")
# Printable ASCII stays as written; spaces, controls and non-ASCII are percent-encoded (UTF-8),
# so the URL is a valid Location header value.
_URL_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


@dataclass(frozen=True, slots=True)
class Link:
    start: int  # span of the href value in the source text (without quotes)
    end: int
    url: str  # the URL the click token will carry


@dataclass(slots=True)
class HtmlPlan:
    links: list[Link] = field(default_factory=list)
    # Where the footer and pixel go: before the last </body>, else before </html>, else at the
    # end.
    insert_at: int = 0
    # True when the two parsers disagreed and links are left alone.
    links_skipped: bool = False


@dataclass(slots=True)
class _Tag:
    name: str
    raw: str  # the start tag as written
    href_span: tuple[int, int] | None  # of the raw value, quotes excluded
    notrack: bool


class _Tokenizer(html.parser.HTMLParser):
    """Start tags of links with their source positions, and the positions of </body> and
    </html>."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text = text
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.tags: list[_Tag] = []
        self.body_end: int | None = None
        self.html_end: int | None = None

    def _offset(self) -> int:
        line, column = self.getpos()
        return self.line_starts[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _LINK_TAGS:
            return
        raw = self.get_starttag_text() or ""
        start = self._offset()
        span = _href_in(raw)
        names = {name for name, _ in attrs}
        self.tags.append(
            _Tag(
                tag,
                raw,
                (start + span[0], start + span[1]) if span else None,
                NOTRACK_ATTRIBUTE in names,
            )
        )

    def handle_endtag(self, tag: str) -> None:
        if tag == "body":
            self.body_end = self._offset()
        elif tag == "html":
            self.html_end = self._offset()


def _href_in(raw: str) -> tuple[int, int] | None:
    """The span of the first href value of a start tag, found with the very expressions
    ``HTMLParser.parse_starttag`` uses, so it is the attribute it reported."""
    match = html.parser.tagfind_tolerant.match(raw, 1)  # type: ignore[attr-defined]
    if match is None:
        return None
    k = match.end()
    while k < len(raw):
        m = html.parser.attrfind_tolerant.match(raw, k)  # type: ignore[attr-defined]
        if m is None:
            break
        name, rest, value = m.group(1, 2, 3)
        if name.lower() == "href":
            if not rest:
                return None
            start, end = m.span(3)
            if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
                start, end = start + 1, end - 1
            return start, end
        k = m.end()
    return None


def clean_url(href: str) -> str | None:
    """An absolute http(s) URL as a browser would follow it, or None if it is not one (or is
    longer than MAX_URL_CHARS: its token would not fit a request line, so it stays as is)."""
    url = _TAB_NEWLINE.sub("", href.strip(_C0_AND_SPACE))
    scheme = url[:8].lower()
    if not (scheme.startswith("http://") or scheme == "https://"):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not parts.hostname:
        return None
    url = quote(url, safe=_URL_SAFE)
    return url if len(url) <= MAX_URL_CHARS else None


def plan_html(
    text: str, *, links: bool = True, skip_hosts: frozenset[str] = frozenset()
) -> HtmlPlan:
    """Which links of ``text`` to rewrite (none unless ``links``) and where to insert;
    ``skip_hosts`` are the tracking hosts themselves (a link already pointing there, such as
    an unsubscribe link, stays)."""
    tokenizer = _Tokenizer(text)
    try:
        tokenizer.feed(text)
        tokenizer.close()
    except Exception:  # the tokenizer is lenient; this is belt and braces
        return HtmlPlan(insert_at=len(text), links_skipped=True)
    plan = HtmlPlan(insert_at=_insertion_point(tokenizer, len(text)))
    if not links:
        return plan
    tags = [t for t in tokenizer.tags if t.href_span is not None]
    seen = _links(text)
    # The same links, in the same order, with the same values: the tokenizer's start tags,
    # alone, read by Lexbor too (so both values follow HTML5's rules).
    if seen != _links("".join(t.raw for t in tags)) or [n for n, _ in seen] != [
        t.name for t in tags
    ]:
        plan.links_skipped = bool(tags or seen)
        return plan
    for (_, value), tag in zip(seen, tags, strict=True):
        if tag.notrack or tag.href_span is None:
            continue
        url = clean_url(value)
        if url is None:
            continue
        host = (urlsplit(url).hostname or "").lower()
        if host in skip_hosts:
            continue
        plan.links.append(Link(tag.href_span[0], tag.href_span[1], url))
    return plan


def _links(text: str) -> list[tuple[str, str]]:
    return [
        (node.tag or "", node.attributes.get("href") or "")
        for node in LexborHTMLParser(text).css("a[href], area[href]")
    ]


def _insertion_point(tokenizer: _Tokenizer, length: int) -> int:
    if tokenizer.body_end is not None:
        return tokenizer.body_end
    if tokenizer.html_end is not None:
        return tokenizer.html_end
    return length


def segments(text: str, cuts: list[tuple[int, int]]) -> list[str]:
    """``text`` without the spans ``cuts`` (sorted, not overlapping): the constant pieces
    between which per-recipient values go."""
    out: list[str] = []
    pos = 0
    for start, end in cuts:
        out.append(text[pos:start])
        pos = end
    out.append(text[pos:])
    return out


def escape_text(value: str) -> str:
    return html.escape(value, quote=True)


__all__ = ["NOTRACK_ATTRIBUTE", "HtmlPlan", "Link", "clean_url", "plan_html", "segments"]
