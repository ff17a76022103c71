"""A small TCP listener for Postfix's lookup protocols: bounded, timed out, stoppable.

Postfix keeps lookup connections open and reuses them, and the peer is not authenticated
(socketmap_table(5) and tcp_table(5) warn about exactly that), so every listener here holds
the hostile-input rules: at most ``mx.lookup_max_connections`` open connections (more are
closed at once; Postfix treats that as a temporary failure and retries), each request complete
within ``mx.lookup_idle_timeout`` seconds of the previous answer, bounded request sizes
(enforced by each protocol), and any protocol violation closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from relay import metrics
from relay.config import MxSettings, parse_hostport

log = structlog.get_logger("mta.postfix")


class ProtocolError(Exception):
    """The peer broke the protocol: the connection is closed without an answer."""


class LookupListener:
    kind = ""  # "socketmap" | "policy": metric label and log field
    stream_limit = 4096  # StreamReader buffer limit: bounds readuntil/readline

    def __init__(self, listen: list[str], settings: MxSettings) -> None:
        self.listen = listen
        self.settings = settings
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[Any]] = set()
        self._accepted = metrics.MX_LOOKUP_CONNECTIONS.labels(self.kind, "accepted")
        self._refused = metrics.MX_LOOKUP_CONNECTIONS.labels(self.kind, "refused")

    async def start(self) -> None:
        for item in self.listen:
            host, port = parse_hostport(item)
            server = await asyncio.start_server(
                self._connected, host, port, limit=self.stream_limit, reuse_address=True
            )
            self._servers.append(server)
        log.info("postfix lookups listening", kind=self.kind, listen=self.bound())

    def bound(self) -> list[tuple[str, int]]:
        out = []
        for server in self._servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                out.append((str(host), int(port)))
        return out

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting; answers in progress finish within ``timeout``, idle connections
        close (Postfix reconnects)."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait(list(self._connections), timeout=timeout)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.settings.lookup_max_connections:
            self._refused.inc()
            writer.close()
            return
        self._accepted.inc()
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self.serve(reader, writer)
        except ProtocolError as exc:
            metrics.MX_LOOKUP_ERRORS.labels(self.kind, "protocol").inc()
            log.info("postfix lookup connection closed", kind=self.kind, reason=str(exc))
        except TimeoutError:
            metrics.MX_LOOKUP_ERRORS.labels(self.kind, "timeout").inc()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("postfix lookup failed", kind=self.kind)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
