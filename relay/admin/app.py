"""The aiohttp application: /api.php, the v1 routes, /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from relay import metrics as relay_metrics
from relay.admin import commands, resources  # noqa: F401  (commands: registers every command)
from relay.admin.commands.send import SUBMITTER
from relay.admin.dispatcher import (
    COMMANDS,
    SERVICES,
    handle_api_php,
    json_response,
    v1_handler,
)
from relay.diagnose import reason
from relay.health import StorageProbe
from relay.services import Services
from relay.submit import Submitter


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


PROBE = web.AppKey("storage_probe", StorageProbe)


async def readyz(request: web.Request) -> web.Response:
    """Ready = this node can accept mail: the storage probe's last write succeeded (no write
    per request; see relay.health). Without a probe (an admin app on its own), a read."""
    services = request.app[SERVICES]
    problems: dict[str, str] = {}
    probe = request.app.get(PROBE)
    if probe is not None:
        problem = probe.status()
        if problem:
            problems["database"] = problem
    else:
        try:
            await services.db.ping()
        except Exception as exc:
            problems["database"] = reason(exc)
    if services.redis is not None:
        try:
            await asyncio.wait_for(services.redis.ping(), 3)
        except Exception as exc:
            problems["redis"] = reason(exc, 3)
    if problems:
        return json_response(
            {"status": "unavailable", "failing": list(problems), "reasons": problems}, status=503
        )
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = relay_metrics.render()
    resp = web.Response(body=body)
    resp.content_type = content_type.split(";")[0]
    resp.charset = "utf-8"
    return resp


def create_app(
    services: Services, submitter: Submitter | None = None, probe: StorageProbe | None = None
) -> web.Application:
    """The admin app; ``submitter`` (the node's SMTP submission path) enables the send API;
    ``probe`` answers /readyz."""
    # Room for the HTTP send API's attachments (base64 grows content by a third).
    max_size = int(services.settings.smtp.max_message_size * 1.4) + 65536
    app = web.Application(client_max_size=max_size)
    app[SERVICES] = services
    if submitter is not None:
        app[SUBMITTER] = submitter
    if probe is not None:
        app[PROBE] = probe
    resources.install(app, services)
    app.router.add_route("GET", "/api.php", handle_api_php)
    app.router.add_route("POST", "/api.php", handle_api_php)
    seen: set[tuple[str, str]] = set()
    for spec in {id(s): s for s in COMMANDS.values()}.values():
        for method, path in spec.routes:
            if (method, path) in seen:
                raise RuntimeError(f"route registered twice: {method} {path}")
            seen.add((method, path))
            app.router.add_route(method, path, v1_handler(spec, method))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


class AdminServer:
    def __init__(
        self,
        services: Services,
        host: str,
        port: int,
        submitter: Submitter | None = None,
        probe: StorageProbe | None = None,
    ) -> None:
        self.app = create_app(services, submitter, probe)
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
