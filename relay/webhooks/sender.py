"""One HTTP POST of a webhook delivery, and how it went.

One aiohttp session per worker: pooled keep-alive connections (as many as the worker has POSTs
in flight; relay/webhooks/worker.py bounds those), the checked resolver
(relay/webhooks/resolver.py) so the address connected to is the address that was checked, no
redirects (a 3xx is an answer like any non-2xx), a connect and a total timeout, no proxies
from the environment, no cookies, and at most ``max_response_bytes`` of the answer read (the
rest is not read; the connection is then closed instead of reused).

A host written as an IP literal in any notation the save-time check knows (``0x7f.1``,
``[::ffff:7f00:1]``, ...) is checked here too (aiohttp does not ask a resolver for literals) and
the request goes to its canonical form, the address that was checked.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

import aiohttp
from yarl import URL

from relay.config import DnsSettings, WebhookSettings
from relay.store.db import storable_text
from relay.webhooks.resolver import AddressRefused, CheckedResolver, NoAddress, check_address
from relay.webhooks.urls import Address, UrlRefused, parse_networks, target_host

EXCERPT_CHARS = 1000
USER_AGENT = "relay-webhooks/1"

# Attempt results (the ``result`` label of relay_webhook_attempts_total).
DELIVERED = "delivered"
HTTP_ERROR = "http_error"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
DNS_ERROR = "dns_error"
REFUSED = "refused"
INTERNAL_ERROR = "internal_error"  # ours, not the endpoint's (a signing key that cannot be read)


@dataclass(slots=True)
class Attempted:
    result: str
    status: int | None
    latency: float
    error: str = ""
    response: str = ""

    @property
    def ok(self) -> bool:
        return self.result == DELIVERED


def _cause(exc: BaseException) -> BaseException:
    """The resolver's own exception inside aiohttp's wrappers, if there is one."""
    seen = exc
    for _ in range(5):
        inner = getattr(seen, "os_error", None) or seen.__cause__
        if inner is None or inner is seen:
            break
        seen = inner
        if isinstance(seen, AddressRefused | NoAddress):
            return seen
    return exc


class Sender:
    def __init__(self, settings: WebhookSettings, dns: DnsSettings) -> None:
        self.settings = settings
        self.resolver = CheckedResolver(dns, parse_networks(settings.allow_networks))
        self._session: aiohttp.ClientSession | None = None
        # Parsed URLs (the host's reading does not change; the address check is redone).
        self._targets: dict[str, tuple[URL, str, Address | None]] = {}

    async def start(self) -> None:
        s = self.settings
        # Loading the CA store reads files: not on the event loop.
        context = await asyncio.to_thread(ssl.create_default_context)
        connector = aiohttp.TCPConnector(
            # No limit here: the worker bounds POSTs (per webhook, and per process for those
            # not yet slow); a pool limit would let hanging endpoints hold every connection.
            limit=0,
            limit_per_host=0,
            resolver=self.resolver,
            use_dns_cache=False,
            keepalive_timeout=30,
            ssl=context,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=s.timeout, connect=s.connect_timeout, sock_connect=s.connect_timeout
            ),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def target(self, url: str) -> URL:
        """The URL to request, its host checked; raises AddressRefused, NoAddress, UrlRefused."""
        parsed = self._targets.get(url)
        if parsed is None:
            host, address = target_host(url)
            target = URL(url)
            if address is not None and target.raw_host != str(address):
                target = target.with_host(str(address))
            if len(self._targets) > 10_000:
                self._targets.clear()
            parsed = self._targets[url] = (target, host, address)
        target, host, address = parsed
        if address is not None:
            check_address(address, self.resolver.allow)
        else:
            await self.resolver.checked(host)
        return target

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Attempted:
        assert self._session is not None, "start() first"
        started = time.perf_counter()

        def took() -> float:
            return time.perf_counter() - started

        try:
            target = await self.target(url)
            # The session's total timeout bounds the whole request, reading the answer included.
            async with self._session.post(
                target, data=body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                excerpt = await self._read(resp)
        except (AddressRefused, UrlRefused) as exc:
            return Attempted(REFUSED, None, took(), f"refused: {exc}")
        except NoAddress as exc:
            return Attempted(DNS_ERROR, None, took(), f"dns: {exc}")
        except TimeoutError:
            return Attempted(TIMEOUT, None, took(), "timeout")
        except (aiohttp.ClientError, OSError) as exc:
            cause = _cause(exc)
            if isinstance(cause, AddressRefused):
                return Attempted(REFUSED, None, took(), f"refused: {cause}")
            if isinstance(cause, NoAddress):
                return Attempted(DNS_ERROR, None, took(), f"dns: {cause}")
            return Attempted(CONNECTION_ERROR, None, took(), _describe(exc))
        latency = took()
        if 200 <= status < 300:
            return Attempted(DELIVERED, status, latency, "", excerpt)
        return Attempted(HTTP_ERROR, status, latency, f"HTTP {status}", excerpt)

    async def _read(self, resp: aiohttp.ClientResponse) -> str:
        cap = self.settings.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        while size < cap:
            chunk = await resp.content.read(cap - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        text = b"".join(chunks)[: EXCERPT_CHARS * 4].decode("utf-8", "replace")
        return storable_text(text[:EXCERPT_CHARS]) or ""


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"connection: {text}"[:500]
