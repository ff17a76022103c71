"""docs/api.md, generated from the command registry: ``python -m tools.apidoc > docs/api.md``.

A development tool, not part of the relay (the installed package does not ship it): it imports
the relay's command registry and runs the examples against a node built by relay.node.

Every registered command is listed with its summary, parameters and error codes, taken from its
docstring::

    Summary paragraph (and more paragraphs if needed).

    Parameters:
        Name (Type, required): description, continued on
            indented lines.

    Errors:
        1: Missing required parameter (Name)

and with an example request and response that are not written by hand: the examples in
``tools.apidoc.examples`` run against a fresh in-process admin app (SQLite in a temporary
directory, real HTTP on loopback, the real send path), and what was sent and answered is
printed. Values that change from run to run (generated keys and passwords, session ids, message
ids, creation times, DKIM public keys) are replaced by stable placeholders, so the output is
the same every time and a test (tests/test_apidoc.py) fails when docs/api.md is stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import inspect
import json
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from relay.admin.dispatcher import COMMANDS, CommandSpec

BASE_URL = "http://127.0.0.1:8025"
EXAMPLE_ADMIN_KEY = "your-admin-api-key"

# Families (command modules) in the order the document presents them; others follow.
FAMILY_ORDER = (
    "users",
    "usergroups",
    "domains",
    "sender_domains",
    "relay_domains",
    "apikeys",
    "smtp_credentials",
    "webhooks",
    "suppressions",
    "events",
    "stats",
    "deliveryservers",
    "send",
)

# -- docstrings ---------------------------------------------------------------------------------

# Docstrings cite where a shape comes from, in the labels the developers' copies of the original
# API's documents carry ("001: ...", "002 spells it ...", "(004)", the project's contract file).
# The published reference stands on its own: those citations are rewritten or dropped here
# (tests/test_docs.py fails on any that get through).
_DOC = r"(?:seed )?\b00\d\b"
PUBLIC_WORDING: list[tuple[re.Pattern[str], str]] = [
    (re.compile(rf"{_DOC} spells it "), "also accepted as "),
    (re.compile(rf"\(({_DOC}|CONTRACT\.md):\s*"), "("),
    (re.compile(rf"\s*\(({_DOC}|CONTRACT\.md)\)"), ""),
    (re.compile(rf"\s*\({_DOC}\s[^()]*\)"), ""),
    (re.compile(rf"\({_DOC}\)\s*"), ""),
    (re.compile(rf"{_DOC}'s (\S+) spelling"), r"the \1 spelling"),
    (re.compile(rf"{_DOC}'s spellings"), "The original API's other spellings"),
    (re.compile(rf"the shape {_DOC} gives"), "the shape the original API gives"),
    (re.compile(r"\(CONTRACT\.md\)\s*"), ""),
    (re.compile(r"each route's document does"), "each route of the original API does"),
    (re.compile(r"\b([Tt])he documents'"), r"\1he original API's"),
    (re.compile(r"\b([Tt])he documents\b"), r"\1he original API"),
    (re.compile(r"\b([Nn])ot in the documents\b"), r"\1ot in the original API"),
]


def public(text: str) -> str:
    """``text`` without citations of documents outside the repository."""
    for pattern, replacement in PUBLIC_WORDING:
        text = pattern.sub(replacement, text)
    return text


_PARAM = re.compile(r"^(?P<name>[^():]+?)\s*(?:\((?P<meta>[^)]*)\))?:\s*(?P<text>.*)$")
_ERROR = re.compile(r"^(?P<code>\d+(?:-\d+)?):\s*(?P<text>.+)$")


@dataclass
class Param:
    name: str
    type: str
    required: str
    text: str


@dataclass
class CommandDoc:
    summary: str
    details: list[str]
    params: list[Param]
    errors: list[tuple[str, str]]
    has_errors_section: bool
    # Lines of the Errors section that are not "N: text", e.g. "(none: ...)".
    error_notes: list[str] = field(default_factory=list)


def _entries(lines: list[str]) -> list[str]:
    """Section lines joined with their more-indented continuation lines."""
    out: list[str] = []
    indent: int | None = None
    for line in lines:
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        if width > indent and out:
            out[-1] += " " + line.strip()
        else:
            out.append(line.strip())
    return out


def parse_docstring(text: str | None) -> CommandDoc:
    lines = inspect.cleandoc(text or "").splitlines()
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in lines:
        if line.strip() in ("Parameters:", "Errors:") and not line.startswith(" "):
            current = line.strip()[:-1]
            sections[current] = []
        else:
            sections[current].append(line)
    paragraphs = [
        " ".join(part.split()) for part in "\n".join(sections[""]).split("\n\n") if part.strip()
    ]
    params = []
    for entry in _entries(sections.get("Parameters", [])):
        m = _PARAM.match(entry)
        if not m:
            raise ValueError(f"unparsable parameter line: {entry!r}")
        meta = [s.strip() for s in (m.group("meta") or "").split(",") if s.strip()]
        kind = next((s for s in meta if s in ("required", "conditional")), "")
        types = [s for s in meta if s not in ("required", "conditional")]
        params.append(
            Param(
                m.group("name").strip(),
                ", ".join(types),
                {"required": "Yes", "conditional": "Conditional"}.get(kind, "No"),
                m.group("text").strip(),
            )
        )
    errors = []
    notes = []
    for entry in _entries(sections.get("Errors", [])):
        m = _ERROR.match(entry)
        if m:
            errors.append((m.group("code"), m.group("text").strip()))
        else:
            notes.append(entry)
    return CommandDoc(
        summary=public(paragraphs[0]) if paragraphs else "",
        details=[public(p) for p in paragraphs[1:]],
        params=[Param(p.name, p.type, p.required, public(p.text)) for p in params],
        errors=[(code, public(text)) for code, text in errors],
        has_errors_section="Errors" in sections,
        error_notes=[public(n) for n in notes],
    )


def specs() -> list[CommandSpec]:
    """Every command once (aliases share a spec), in document order."""
    import relay.admin.commands  # noqa: F401  (registers every command)

    unique = list({id(s): s for s in COMMANDS.values()}.values())

    def family_key(spec: CommandSpec) -> tuple[int, str]:
        fam = family(spec)
        return (FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER), fam)

    return sorted(unique, key=family_key)  # stable: registration order within a family


def family(spec: CommandSpec) -> str:
    return str(spec.func.__module__).rsplit(".", 1)[-1]


def aliases(spec: CommandSpec) -> list[str]:
    return [name for name, s in COMMANDS.items() if s is spec and name != spec.name]


# -- running the examples -----------------------------------------------------------------------


@dataclass
class Exchange:
    """One example request and what the app answered."""

    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str] | None
    body: dict[str, Any] | None
    status: int
    response_headers: dict[str, str]
    response: Any  # parsed JSON, or text


Example = Callable[["ExampleSession"], Awaitable[None]]
EXAMPLES: dict[str, Example] = {}


def example(command: str) -> Callable[[Example], Example]:
    """Register the example of a command (one per command)."""

    def register(func: Example) -> Example:
        if command in EXAMPLES:
            raise RuntimeError(f"two examples for {command}")
        EXAMPLES[command] = func
        return func

    return register


# Response fields whose values are generated secrets or ids: replaced by stable placeholders.
SECRET_FIELDS = ("APIKey", "SMTPUsername", "SMTPPassword", "SessionID", "SigningKey", "MessageID")
# Response fields holding the time of the run.
TIME_FIELDS = ("CreatedAt", "UpdatedAt", "ExpiresAt", "LastUsedAt")
EXAMPLE_TIME = "2026-05-16 04:26:31"
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_DKIM_P = re.compile(r"p=[A-Za-z0-9+/=]{40,}")
_DATED_FILE = re.compile(r"(filename=\"[a-z-]+)-\d{4}-\d\d-\d\d(\.csv\")")


class ExampleSession:
    """The app the examples run against, with an account ready to use, and the recorder."""

    def __init__(self, base: str, session: aiohttp.ClientSession, services: Any) -> None:
        self.base = base
        self.http = session
        self.services = services
        self.exchanges: dict[str, Exchange] = {}
        self.current: str | None = None
        self._subst: dict[str, str] = {}
        self._counters: dict[str, int] = {}
        # Filled by examples.setup().
        self.user_key = ""
        self.session_id = ""
        self.user_id = 0
        self.domain_id = 0
        self.domain = ""
        self.sender_key = ""

    # -- placeholders --

    def placeholder(self, value: str, kind: str) -> str:
        """A stable stand-in for a generated value, shaped like it."""
        if value in self._subst:
            return self._subst[value]
        n = self._counters[kind] = self._counters.get(kind, 0) + 1
        if kind == "APIKey" and value.startswith("eg_live_"):
            fake = "eg_live_" + "x" * (32 - len(str(n))) + str(n)
        elif kind == "APIKey":
            fake = "your-api-key" if n == 1 else f"api-key-of-user-{n}"
        elif kind == "SessionID":
            fake = "your-session-id" if n == 1 else f"session-id-{n}"
        elif kind == "SMTPUsername":
            fake = f"smtp_user_{n:03d}"
        elif kind == "SMTPPassword":
            fake = f"generated_password_{n}"
        elif kind == "SigningKey":
            fake = hashlib.sha256(f"signing key {n}".encode()).hexdigest().upper()
        else:  # uuid-shaped ids
            fake = f"550e8400-e29b-41d4-a716-{446655440000 + n:012d}"
        self._subst[value] = fake
        if kind == "APIKey" and value.startswith("eg_live_"):
            from relay.secrets import mask_secret

            self._subst[mask_secret(value)] = mask_secret(fake)
        return fake

    def learn(self, data: Any) -> None:
        """Give every generated value in a response its placeholder."""
        if isinstance(data, dict):
            for key, value in data.items():
                if key in SECRET_FIELDS and isinstance(value, str) and value:
                    if key == "SigningKey" and not re.fullmatch(r"[0-9A-F]{64}", value):
                        continue  # the legacy key is derived from the fixed example admin key
                    if key == "APIKey" and "*" in value:
                        continue  # a hint of a key seen before
                    if key == "MessageID" and not _UUID.fullmatch(value):
                        continue  # a Message-ID header, not a queue id
                    self.placeholder(value, "uuid" if key == "MessageID" else key)
                elif key == "SMTPResponse" and isinstance(value, str):
                    for uuid in _UUID.findall(value):  # "250 2.0.0 Ok: queued as <id>"
                        self.placeholder(uuid, "uuid")
                else:
                    self.learn(value)
        elif isinstance(data, list):
            for item in data:
                self.learn(item)

    def normalize(self, text: str) -> str:
        for value in sorted(self._subst, key=len, reverse=True):
            text = text.replace(value, self._subst[value])
        text = _DKIM_P.sub("p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA...IDAQAB", text)
        return _DATED_FILE.sub(r"\1-2026-05-16\2", text)

    # -- calls --

    async def _send(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        url = self.base + path + ("?" + urlencode(query) if query else "")
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if body is not None:
            kwargs["json"] = body
        async with self.http.request(method, url, **kwargs) as resp:
            raw = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            data: Any
            if ctype.startswith("application/json"):
                data = json.loads(raw)
            else:
                data = raw.decode("utf-8-sig")
            return resp.status, dict(resp.headers), data

    def _auth(self, auth: str) -> dict[str, str]:
        if auth == "session":
            return {"SessionID": self.session_id}
        if auth == "apikey":
            return {"APIKey": self.user_key}
        if auth == "admin":
            return {"AdminAPIKey": EXAMPLE_ADMIN_KEY}
        return {}

    async def call(self, command: str, auth: str = "session", **params: Any) -> Any:
        """A setup call (not shown); fails loudly if it does not succeed."""
        body = {"Command": command, **self._auth(auth), **params}
        status, _, data = await self._send("POST", "/api.php", body=body)
        if status != 200 or not isinstance(data, dict) or data.get("Success") is False:
            raise RuntimeError(f"example setup {command} failed: {status} {data}")
        self.learn(data)
        return data

    async def show(
        self,
        command: str,
        auth: str = "session",
        *,
        http_get: bool = False,
        **params: Any,
    ) -> Any:
        """The example request of ``self.current`` through /api.php."""
        fields = {"Command": command, **self._auth(auth), **params}
        if http_get:
            query = {k: str(v) for k, v in fields.items()}
            return await self._record("GET", "/api.php", {}, query, None)
        return await self._record(
            "POST", "/api.php", {"Content-Type": "application/json"}, None, fields
        )

    async def show_route(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        query: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        """The example request of ``self.current`` through a v1 route, with a Bearer key."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        return await self._record(method, path, headers, query, body)

    async def _record(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        query: dict[str, str] | None,
        body: dict[str, Any] | None,
    ) -> Any:
        assert self.current is not None, "show() outside an example"
        if self.current in self.exchanges:
            raise RuntimeError(f"{self.current}: an example shows one request")
        status, resp_headers, data = await self._send(
            method, path, headers=headers, query=query, body=body
        )
        ok = 200 <= status < 300 and not (isinstance(data, dict) and data.get("Success") is False)
        if not ok:
            raise RuntimeError(f"example of {self.current} failed: {status} {data}")
        self.learn(data)
        shown = {
            k: v
            for k, v in resp_headers.items()
            if k in ("Content-Type", "Content-Disposition") or k.startswith("X-Octeth")
        }
        self.exchanges[self.current] = Exchange(
            method, path, headers, query, body, status, shown, data
        )
        return data


@contextlib.asynccontextmanager
async def example_app() -> AsyncIterator[ExampleSession]:
    """A fresh node: SQLite in a temporary directory, the admin app on a loopback port, and
    the real send path (queue writer, DKIM signer, submitter)."""
    from relay import config
    from relay.admin.app import AdminServer
    from relay.node import running_node

    with tempfile.TemporaryDirectory(prefix="relay-apidoc-") as tmp:
        settings = config.load(
            None,
            env={
                "RELAY_DATA_DIR": tmp,
                "RELAY_ADMIN_API_KEY": EXAMPLE_ADMIN_KEY,
                "RELAY_HOSTNAME": "smtp.example.com",
                # What addsmtp advertises: a relay listening on the submission ports.
                "RELAY_SMTP_LISTEN": "0.0.0.0:587",
                "RELAY_SMTPS_LISTEN": "0.0.0.0:465",
                "RELAY_DKIM_KEY_BITS": "1024",
                "RELAY_DKIM_SELECTOR": "rl202601",
                "RELAY_DNS_SPF_INCLUDE": "spf.example.com",
            },
        )
        async with running_node(settings, ingest=True) as node:
            server = AdminServer(node.services, "127.0.0.1", 0, node.submitter)
            await server.start()
            try:
                async with aiohttp.ClientSession() as http:
                    yield ExampleSession(f"http://127.0.0.1:{server.port}", http, node.services)
            finally:
                await server.stop()


async def run_examples() -> dict[str, Exchange]:
    from tools.apidoc import examples

    async with example_app() as ex:
        await examples.setup(ex)
        for spec in specs():
            func = EXAMPLES.get(spec.name)
            if func is None:
                continue
            ex.current = spec.name
            await func(ex)
            if spec.name not in ex.exchanges:
                raise RuntimeError(f"the example of {spec.name} showed no request")
        ex.current = None
        unknown = set(EXAMPLES) - {s.name for s in specs()}
        if unknown:
            raise RuntimeError(f"examples for unknown commands: {sorted(unknown)}")
        return {name: _normalized(ex, x) for name, x in ex.exchanges.items()}


def _normalized(ex: ExampleSession, x: Exchange) -> Exchange:
    def fix(data: Any) -> Any:
        if isinstance(data, dict):
            return {
                k: (EXAMPLE_TIME if k in TIME_FIELDS and isinstance(v, str) else fix(v))
                for k, v in data.items()
            }
        if isinstance(data, list):
            return [fix(v) for v in data]
        if isinstance(data, str):
            return ex.normalize(data)
        return data

    return Exchange(
        x.method,
        x.path,
        fix(x.headers),
        fix(x.query),
        fix(x.body),
        x.status,
        fix(x.response_headers),
        fix(x.response),
    )


# -- rendering ----------------------------------------------------------------------------------


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def _shell(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def render_request(x: Exchange) -> str:
    url = BASE_URL + x.path
    if x.method == "GET" and x.query:
        lines = [f"curl -G {url}"]
        lines += [f"  -H {_shell(f'{k}: {v}')}" for k, v in x.headers.items()]
        lines += [f"  --data-urlencode {_shell(f'{k}={v}')}" for k, v in x.query.items()]
    else:
        lines = [f"curl -X {x.method} {url}" + (f"?{urlencode(x.query)}" if x.query else "")]
        lines += [f"  -H {_shell(f'{k}: {v}')}" for k, v in x.headers.items()]
        if x.body is not None:
            lines.append(f"  -d {_shell(_json(x.body))}")
    return " \\\n".join(lines)


def render_response(x: Exchange) -> str:
    head = [f"HTTP {x.status}"] + [f"{k}: {v}" for k, v in x.response_headers.items()]
    if isinstance(x.response, str):
        # The CSV's CRLF line ends (RFC 4180) and its BOM are not shown.
        return "\n".join(head) + "\n\n" + x.response.replace("\r\n", "\n").rstrip("\n")
    return "\n".join(head) + "\n\n" + _json(x.response)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


AUTH_TEXT = {
    "admin": "admin key (`AdminAPIKey`, or `Authorization: Bearer <admin key>`)",
    "user": "user (`APIKey` or `SessionID`)",
    "user_or_admin": "user (`APIKey` or `SessionID`), or the admin key naming the account",
    "sender_key": "sender-domain API key (`Authorization: Bearer <key>`, or `SenderAPIKey`)",
    "admin_or_anonymous": "admin key, or none",
    "none": "none",
}


def render_command(spec: CommandSpec, x: Exchange | None) -> str:
    doc = parse_docstring(spec.func.__doc__)
    out = [f"### `{spec.name}`", "", doc.summary, ""]
    for para in doc.details:
        out += [para, ""]
    access = [f"`POST /api.php` or `GET /api.php` with `Command={spec.name}`"]
    access = [f"`{m} {p}`" for m, p in spec.routes] + access
    out.append(f"- Access: {', '.join(access)}")
    out.append(f"- Authentication: {AUTH_TEXT.get(spec.auth, spec.auth)}")
    other = aliases(spec)
    if other:
        out.append(f"- Also: {', '.join(f'`{a}`' for a in other)}")
    shape = (
        '`{"Errors": [{"Code", "Message"}]}`'
        if spec.style == "v1"
        else ('`{"Success": false, "ErrorCode": ...}`')
    )
    out.append(f"- Error body: {shape}")
    if spec.rate_limited:
        out.append("- Rate limit: 100 requests per 60 seconds per key (HTTP 429)")
    out.append("")
    if doc.params:
        out += ["| Parameter | Type | Required | Description |", "|---|---|---|---|"]
        out += [
            f"| {_cell(p.name)} | {_cell(p.type)} | {p.required} | {_cell(p.text)} |"
            for p in doc.params
        ]
        out.append("")
    if doc.errors:
        out += ["| Error code | Meaning |", "|---|---|"]
        out += [f"| {code} | {_cell(text)} |" for code, text in doc.errors]
        out.append("")
    for note in doc.error_notes:
        out += [f"Errors: {note}", ""]
    if x is None:
        out += ["No example yet.", ""]
    else:
        out += ["Example request:", "", "```bash", render_request(x), "```", ""]
        out += ["Response:", "", "```http", render_response(x), "```", ""]
    return "\n".join(out)


HEADER = """\
# Management API reference

Generated by `python -m tools.apidoc > docs/api.md` from the command registry: the
summaries, parameters and error codes are the commands' docstrings, and every example is a
real request to a fresh in-process relay with the response it got (generated keys, ids and
times replaced by stable placeholders). `tests/test_apidoc.py` fails when this file is stale.

## Conventions

- `/api.php` takes the command in `Command` and its parameters as a JSON body, a form body or
  a query string. Command and parameter names are case-insensitive: `EmailGateway.AddAPI` is
  `emailgateway.addapi`, `ApiKeyId` is `APIKeyID`, `smtpid` is `SMTPID`. PHP-style nested form
  fields (`TestResults[SPF]=1`) are read as objects.
- The v1 routes (`/api/v1/...`) take a JSON body (or a query string) and authenticate with the
  sender domain's API key as a Bearer token; each is also reachable through `/api.php` under
  the command name given with it.
- Bodies are read whatever the method (`GET` and `DELETE` with a body, as `curl -X GET ... -d`
  sends them) and whatever the `Content-Type` says: a body that is a JSON object is read as
  JSON (`curl -d '{...}'` labels it `application/x-www-form-urlencoded`), anything else as a
  form (`multipart/form-data` on POST, PUT, PATCH and DELETE). Body fields override query
  fields of the same name. A body that cannot be read (JSON that does not parse, is not UTF-8,
  or nests too deeply for the parser) gives no parameters: the command reports what is missing.
- Bad values get the command's own code for an invalid (or, where it has none, a missing)
  parameter, never an HTTP 500: a value of the wrong type; a whole number outside what the
  database stores (Integer parameters are -2147483648 to 2147483647; `1e300` and `2^63` are not
  whole numbers of any parameter); a date outside 1970-01-01 to 9999-12-30 (an invalid date
  falls back to the default, as every invalid date does); text that is not Unicode (a lone
  surrogate escape such as `"\\ud800"`) or holds a NUL; `NaN` or `Infinity`; nesting deeper
  than 16 levels.
- Domain names may be given in U-labels (`bücher.example`): they are stored and answered in
  their A-label form (`xn--bcher-kva.example`), as are the domains of the send API's addresses
  and of suppressed addresses.
- Errors: `/api.php` commands answer HTTP 200 with `{"Success": false, "ErrorCode": N}` (a
  list of codes for commands that report every problem at once, with `ErrorText` or
  `ErrorMessage`); v1 routes
  answer `{"Errors": [{"Code": N, "Message": "..."}]}` with an HTTP status: 400 invalid
  parameters, 401 missing or invalid key, 403 account or domain not allowed, 404 unknown
  object, 422 refused content, 429 rate limit or send limit, 503 storage unavailable.
- Codes common to every command (not repeated in each command's list): 99996 internal
  error or storage unavailable (HTTP 500/503), 99997 unknown command, 99998 authentication
  failure or session expired (the `APIKey` or `SessionID` of a Disabled user is refused the
  same way, and a Disabled user cannot log in), 99999 not enough privileges (a user calling an
  admin command); on the v1 routes of user commands, code 0 with HTTP 401 for the same.
- Rate limit: the routes marked with one allow 100 requests per 60 seconds per API key
  (`admin.rate_limit_requests` / `admin.rate_limit_window`), counted in Redis when configured
  so that all nodes share it; beyond it HTTP 429 with `Retry-After`.

## Compatibility names

The API follows the email-gateway API of Octeth's Oempro (command names, parameters, error
codes and response shapes), so clients written for it work unchanged; "the original API" below
means that API. A few of its names appear here although they say nothing about this relay:

- `accepted-by-oempro` is the original API's event name for `accepted` (the relay queued the
  recipient); `rejected-by-oempro` is its name for `rejected` (refused by the relay's checks).
  Both are taken wherever an `Event` filter is, and some responses use them.
- `accepted-by-mta` and `rejected-by-mta` are its names for `delivered` (a delivery server
  answered 2xx) and `bounced` (it answered 5xx).
- `X-Octeth-Export-Total`, `X-Octeth-Export-Truncated` and `X-Octeth-Export-Limit` are the
  response headers of `emailgateway.exportevents` under the original API's names: the number
  of matching events, and whether and where the export was cut off.
"""


def _family_title(spec: CommandSpec) -> tuple[str, str]:
    """(heading, module docstring): the heading is the docstring's first paragraph up to its
    first ":" or " (" ("Webhooks", "The event log")."""
    module = importlib.import_module(spec.func.__module__)
    doc = public(inspect.cleandoc(module.__doc__ or family(spec)))
    first = " ".join(doc.partition("\n\n")[0].split())
    title = re.split(r":| \(", first, maxsplit=1)[0].rstrip(".")
    return title, doc


def render(exchanges: dict[str, Exchange]) -> str:
    out = [HEADER, "## Commands", ""]
    by_family: dict[str, list[CommandSpec]] = {}
    for spec in specs():
        by_family.setdefault(family(spec), []).append(spec)
    for fam, group in by_family.items():
        title, _ = _family_title(group[0])
        names = ", ".join(f"`{s.name}`" for s in group)
        out.append(f"- [{title}](#{fam}): {names}")
    out.append("")
    for fam, group in by_family.items():
        title, intro = _family_title(group[0])
        out += [f'<a id="{fam}"></a>', "", f"## {title}", "", intro, ""]
        for spec in group:
            out.append(render_command(spec, exchanges.get(spec.name)))
    return "\n".join(out).rstrip("\n") + "\n"


async def generate() -> str:
    return render(await run_examples())


def main() -> int:
    from relay import log

    # Logs go to stderr, never into the generated document.
    log.configure("console", "warning")
    sys.stdout.write(asyncio.run(generate()))
    return 0


DOCS_PATH = Path(__file__).resolve().parents[2] / "docs" / "api.md"
