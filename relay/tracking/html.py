"""Where to change an HTML part: the href values to rewrite, where the pixel and footer go.

The part is changed by splicing at those positions, never by re-serializing a parsed tree: a
serializer (lxml, Lexbor, html5lib) rewrites the whole document, dropping a DOCTYPE's public
identifier, turning Outlook's ``<![if !mso]>`` conditionals into plain comments, adding
``<tbody>``... all of which changes how mail clients render it. So:

- Lexbor (selectolax), an HTML5 parser, says which ``<a>``/``<area>`` elements a browser sees
  and what their href values are (HTML5's character-reference rules in attributes, e.g.
  ``?a=1&not=2`` is not ``?a=1¬=2``);
- their start tags are found in the source by a scan for ``<a``/``<area`` tags, used only when
  what it finds is exactly those links, one for one (same kind, same decoded value, same
  order); a link-shaped tag in a comment or a script makes it disagree, and then the standard
  library's tokenizer (``html.parser``, pure Python and several times slower) finds them;
- where even that disagrees with Lexbor (markup so broken that the two split it differently),
  no link of that part is rewritten.
"""

from __future__ import annotations

import functools
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
_UNSAFE = re.compile(r"[^\x21-\x7e]")


@dataclass(slots=True)  # not frozen: a frozen __init__ costs twice as much, per link
class Link:
    start: int  # span of the href value in the source text (without quotes)
    end: int
    url: str  # the URL the click token will carry


@dataclass(slots=True)
class HtmlPlan:
    links: list[Link] = field(default_factory=list)
    # Where the footer and pixel go.
    insert_at: int = 0
    # True when the two parsers disagreed and links are left alone.
    links_skipped: bool = False


@dataclass(slots=True)
class _Seen:
    """A link as Lexbor (HTML5) reads it."""

    name: str
    href: str
    notrack: bool


@dataclass(slots=True)
class _Tag:
    """A link start tag as written in the source."""

    name: str
    href_span: tuple[int, int]  # of the value in the source, quotes excluded
    written: str  # the value as written, with its quotes if it has any


# A whole <a ...> or <area ...> start tag, quoted values kept whole: where links can be. It
# also finds tags inside comments, scripts and other text, which is why its findings are only
# used when they match the real links one for one (see plan_html).
# The first href attribute of a tag, and its value as written (not hreflang=).
_HREF = re.compile(r"""[\s/]href(?=[\s/>=])(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>]*))?""", re.IGNORECASE)
_LINK_START = re.compile(r"<(a|area)(?=[\s/>])(?:[^>\"']+|\"[^\"]*\"|'[^']*')*>", re.IGNORECASE)
# The closing tags of a document, when nothing but whitespace follows them.
_BODY_END = re.compile(r"(?:</body\s*>\s*)?(?:</html\s*>\s*)?\Z", re.IGNORECASE)
_TAIL = 512


class _Tokenizer(html.parser.HTMLParser):
    """Link start tags with their source positions, as a real tokenizer splits the text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.tags: list[_Tag] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _LINK_TAGS:
            return
        raw = self.get_starttag_text() or ""
        line, column = self.getpos()
        start = self.line_starts[line - 1] + column
        found = _href_in(raw)
        if found is not None:
            (a, b), written = found
            self.tags.append(_Tag(tag, (start + a, start + b), written))


def _href_in(raw: str) -> tuple[tuple[int, int], str] | None:
    """The span of the first href value of a start tag (empty at the name for a bare
    ``href``) and the value as written, found with the very expressions
    ``HTMLParser.parse_starttag`` uses."""
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
                return (m.end(1), m.end(1)), ""
            start, end = m.span(3)
            if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
                return (start + 1, end - 1), value
            return (start, end), value
        k = m.end()
    return None


def clean_url(href: str) -> tuple[str, str] | None:
    """An absolute http(s) URL as a browser would follow it, and its host; None if it is not
    one (or is longer than MAX_URL_CHARS: its token would not fit a request line)."""
    url = _TAB_NEWLINE.sub("", href.strip(_C0_AND_SPACE))
    scheme = url[:8].lower()
    if not (scheme.startswith("http://") or scheme == "https://"):
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    if _UNSAFE.search(url):
        url = quote(url, safe=_URL_SAFE)
    return (url, host) if len(url) <= MAX_URL_CHARS else None


def plan_html(
    text: str, *, links: bool = True, skip_hosts: frozenset[str] = frozenset()
) -> HtmlPlan:
    """Which links of ``text`` to rewrite (none unless ``links``) and where to insert;
    ``skip_hosts`` are the tracking hosts themselves (a link already pointing there, such as
    an unsubscribe link, stays). The plan may be shared: read it, never change it."""
    if len(text) <= _CACHED_CHARS:
        return _plan_cached(text, links, skip_hosts)
    return _plan(text, links, skip_hosts)


def _plan(text: str, links: bool, skip_hosts: frozenset[str]) -> HtmlPlan:
    # Before the closing tags; otherwise at the very end, which HTML5 parsing also puts at the
    # end of the body (text after </body> or </html> still belongs to it).
    plan = HtmlPlan(insert_at=_insert_at(text))
    if not links:
        return plan
    seen = _seen(text)
    if not seen:
        return plan
    # Where the links are: the fast scan when its start tags are exactly the real links,
    # else a real tokenizer's start tags, else (markup the two read differently) nowhere.
    tags = _scan(text)
    if not _agree(seen, tags):
        tags = _tokenize(text)
        if not _agree(seen, tags):
            plan.links_skipped = True
            return plan
    cleaned: dict[str, tuple[str, str] | None] = {}  # newsletters repeat their URLs
    for link, tag in zip(seen, tags, strict=True):
        if link.notrack:
            continue
        if link.href not in cleaned:
            cleaned[link.href] = clean_url(link.href)
        url = cleaned[link.href]
        if url is None or url[1].lower() in skip_hosts:
            continue
        plan.links.append(Link(tag.href_span[0], tag.href_span[1], url[0]))
    return plan


# Bulk mail sends one HTML body to many recipients, often one SMTP transaction each: the plan
# of a part planned recently is reused (a plan depends on nothing but the arguments). Only parts
# up to _CACHED_CHARS, so the cache holds at most _CACHE_SIZE times that many characters.
_CACHED_CHARS = 32 * 1024
_CACHE_SIZE = 64
_plan_cached = functools.lru_cache(maxsize=_CACHE_SIZE)(_plan)


def _insert_at(text: str) -> int:
    """Where ``_BODY_END`` first matches in the last ``_TAIL`` characters (what
    ``_BODY_END.search(text, len(text) - _TAIL)`` finds), trying only the positions where a
    match can start, a ``</`` or the very end, instead of every position of the tail (a
    search costs about 50 us there)."""
    end = len(text)
    pos = text.find("</", max(0, end - _TAIL))
    while pos != -1:
        if _BODY_END.match(text, pos):
            return pos
        pos = text.find("</", pos + 2)
    return end


def _seen(text: str) -> list[_Seen]:
    tree = LexborHTMLParser(text)
    # tags() is several times cheaper than a CSS query; document order needs the query only
    # when both kinds are present.
    nodes = list(tree.tags("area"))
    nodes = tree.css("a[href], area[href]") if nodes else list(tree.tags("a"))
    out = []
    for node in nodes:
        attrs = node.attributes
        if "href" in attrs:
            out.append(_Seen(node.tag or "", attrs["href"] or "", NOTRACK_ATTRIBUTE in attrs))
    return out


def _scan(text: str) -> list[_Tag]:
    tags = []
    for m in _LINK_START.finditer(text):
        h = _HREF.search(text, m.start(), m.end())
        if h is None:
            continue
        written = h.group(1)
        if written is None:
            at = (h.end(), h.end())
        elif written[:1] in ("'", '"'):
            at = (h.start(1) + 1, h.end(1) - 1)
        else:
            at = h.span(1)
        tags.append(_Tag(m.group(1).lower(), at, written or ""))
    return tags


def _tokenize(text: str) -> list[_Tag]:
    tokenizer = _Tokenizer(text)
    try:
        tokenizer.feed(text)
        tokenizer.close()
    except Exception:  # the tokenizer is lenient; this is belt and braces
        return []
    return tokenizer.tags


def _agree(seen: list[_Seen], tags: list[_Tag]) -> bool:
    """The start tags are the links, one for one: same kind, same href value (the raw value as
    written, decoded by HTML5's rules: by Lexbor itself when the plain decodings differ)."""
    if len(seen) != len(tags):
        return False
    pairs = zip(seen, tags, strict=True)
    return all(link.name == tag.name and _same_value(link, tag) for link, tag in pairs)


def _same_value(link: _Seen, tag: _Tag) -> bool:
    """The written value at the span decodes to the link's href."""
    value = tag.written
    if value[:1] in ("'", '"'):
        value = value[1:-1]
    if link.href == value or ("&" in value and link.href == html.unescape(value)):
        return True
    alone = _seen(f"<a href={tag.written}>")  # HTML5's decoding, e.g. of "&not=" in a URL
    return len(alone) == 1 and alone[0].href == link.href


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
