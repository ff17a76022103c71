"""What the tracking listener sends back: the pixel, the unsubscribe pages, the headers."""

from __future__ import annotations

import html

# A 1x1 transparent GIF: header, screen 1x1 with a 2-colour table, graphic control extension
# (colour 0 transparent), image descriptor, LZW data of one pixel, trailer. 43 bytes.
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00"
    b"\x00\x00\x00\xff\xff\xff"
    b"\x21\xf9\x04\x01\x00\x00\x00\x00"
    b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00"
    b"\x02\x02\x44\x01\x00"
    b"\x3b"
)

# Never cached (the pixel counts every fetch; a cached redirect would skip the click).
NO_STORE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "Thu, 01 Jan 1970 00:00:00 GMT",
    # Tokens stay on our side: not in the Referer the target sees, not in search indexes.
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
}
# The pages: no scripts, no framing (a framed unsubscribe button could be clicked for someone).
PAGE_HEADERS = {
    **NO_STORE,
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 32em; margin: 4em auto; padding: 0 1em;
       color: #222; line-height: 1.5; }}
button {{ font-size: 1em; padding: .5em 1.5em; cursor: pointer; }}
</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""


def masked(address: str) -> str:
    """``j***@example.com``: enough for the owner to recognize, little for anyone else."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}" if local else "***"


def confirm_page(address: str) -> str:
    """GET /u/<token>: one button that POSTs the RFC 8058 body to the same URL (no script)."""
    body = (
        f"<p>Stop sending email to <strong>{html.escape(masked(address))}</strong> "
        "from this sender?</p>\n"
        '<form method="post">\n'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">\n'
        '<input type="hidden" name="source" value="page">\n'
        '<button type="submit">Unsubscribe</button>\n'
        "</form>"
    )
    return _PAGE.format(title="Unsubscribe", body=body)


def done_page(address: str) -> str:
    body = (
        f"<p><strong>{html.escape(masked(address))}</strong> will not receive email from "
        "this sender any more.</p>"
    )
    return _PAGE.format(title="You are unsubscribed", body=body)


def bad_request_page() -> str:
    body = "<p>This request does not ask to unsubscribe. Please use the button on the page.</p>"
    return _PAGE.format(title="Nothing was changed", body=body)


def unavailable_page() -> str:
    body = "<p>Your request could not be saved just now. Please try again in a minute.</p>"
    return _PAGE.format(title="Please try again", body=body)
