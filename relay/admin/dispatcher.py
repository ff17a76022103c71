"""The command dispatcher behind ``/api.php`` and the v1 routes.

Adding a command is adding one decorated function::

    @command("emailgateway.getdomain", auth="user")
    async def get_domain(call: Call) -> dict:
        ...
        return ok(Domain=...)

The dispatcher reads parameters (JSON body, form body, query string; names case-insensitive),
authenticates as the command's ``auth`` demands, applies the rate limit where the documents
set one, runs the command, and turns an ``ApiError`` into the documented error body. This is
the one place where other exceptions become answers: the database unavailable is 99996 with
HTTP 503 (or the command's own documented code, ``storage_error``), anything else a generic 500
body, logged here; no stack trace ever reaches a client. Every call that changes something is
logged once it is answered, with who made it (relay.admin.audit).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import structlog
from aiohttp import web
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from relay import metrics
from relay.admin import audit, auth
from relay.admin.errors import (
    ApiError,
    auth_failed,
    internal_error,
    not_enough_privileges,
    rate_limited,
    storage_unavailable,
    unknown_command,
)
from relay.admin.params import MALFORMED, Params
from relay.ratelimit import LimiterUnavailable
from relay.services import Services
from relay.store.db import StorageUnavailable

SERVICES = web.AppKey("services", Services)

log = structlog.get_logger("relay.admin")

# "The database cannot be reached", as a command sees it: the queue's own wrapper, SQLAlchemy's
# wrapping of such driver errors, and a refused or timed-out connection (asyncpg's connect).
# Shared counters that cannot be reached answer the same (limits fall back on the node's own
# counters first, relay.ratelimit; these are what would be left), Redis's errors included
# (see _unavailable).
STORAGE_ERRORS = (
    StorageUnavailable,
    OperationalError,
    InterfaceError,
    ConnectionError,
    TimeoutError,
    LimiterUnavailable,
)


def _unavailable(exc: Exception) -> bool:
    if isinstance(exc, STORAGE_ERRORS):
        return True
    # redis is imported only when it is configured: if it is not loaded, this is not its error.
    redis_errors = sys.modules.get("redis.exceptions")
    return redis_errors is not None and isinstance(exc, redis_errors.RedisError)


Result = dict[str, Any] | web.StreamResponse


@dataclass
class Call:
    services: Services
    params: Params
    principal: auth.Principal
    request: web.Request
    command: str

    @property
    def user_id(self) -> int:
        """The acting user (commands with auth "user" always have one)."""
        assert self.principal.user_id is not None
        return self.principal.user_id


Handler = Callable[[Call], Awaitable[Result]]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    func: Handler
    # "admin" | "user" | "user_or_admin" | "sender_key" | "admin_or_anonymous" | "none"
    auth: str
    # Error body shape: "legacy" (Success/ErrorCode) or "v1" (Errors list).
    style: str = "legacy"
    rate_limited: bool = False
    # v1 REST routes served by this command: (method, path).
    routes: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    # auth "sender_key": the error code when no key is given at all. The documents give
    # "1: Missing SenderAPIKey" on some routes; the others only know "13: Invalid SenderAPIKey".
    missing_key: int = 13
    # The command's documented answer when a database operation fails (any database error:
    # its transaction rolled back); None: 99996 / 503 when the database is unavailable.
    storage_error: ApiError | None = None


COMMANDS: dict[str, CommandSpec] = {}


def command(
    name: str,
    *,
    auth: str,
    style: str = "legacy",
    rate_limited: bool = False,
    routes: tuple[tuple[str, str], ...] = (),
    aliases: tuple[str, ...] = (),
    missing_key: int = 13,
    storage_error: ApiError | None = None,
) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        spec = CommandSpec(
            name.lower(), func, auth, style, rate_limited, routes, missing_key, storage_error
        )
        for key in (name, *aliases):
            if key.lower() in COMMANDS:
                raise RuntimeError(f"command registered twice: {key}")
            COMMANDS[key.lower()] = spec
        return func

    return register


def ok(**fields: Any) -> dict[str, Any]:
    """The usual legacy success body: Success, ErrorCode 0, then the command's fields."""
    return {"Success": True, "ErrorCode": 0, **fields}


def dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, dumps=dumps, headers=headers)


async def read_params(request: web.Request, *, json_only: bool = False) -> Params:
    """Query string first, then the body on top, whatever the method (the documents' curl
    examples send bodies with GET and DELETE too)."""
    params = Params()
    if not json_only:
        params.update(dict(request.query))
    if request.body_exists:
        params.update(await _body_fields(request, json_only=json_only))
    return params


async def _body_fields(request: web.Request, *, json_only: bool) -> dict[str, Any]:
    """The body's fields: JSON, a form, or multipart. ``curl -d '{...}'`` sends JSON as
    application/x-www-form-urlencoded (curl's default): a body that is a JSON object is read
    as JSON whatever its type says. A body that cannot be read (not UTF-8, not JSON, nested
    beyond what the parser takes) gives no fields, so the command reports what is missing."""
    ctype = request.content_type
    if ctype == "multipart/form-data" and not json_only:
        return await _multipart_fields(request)
    raw = await request.read()
    if json_only or ctype == "application/json" or raw.lstrip().startswith(b"{"):
        try:
            data = json.loads(raw.decode("utf-8-sig"), parse_constant=_not_a_number)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict) or json_only or ctype == "application/json":
            return data if isinstance(data, dict) else {}
    # A form (or a body without a type): invalid UTF-8 becomes U+FFFD, as in query strings.
    text = raw.decode("utf-8", "replace")
    return dict(parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="replace"))


def _not_a_number(_name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259 6), though Python's parser accepts them.
    return MALFORMED


async def _multipart_fields(request: web.Request) -> dict[str, Any]:
    """The text fields of a multipart body (files are no parameter of any command). aiohttp
    reads forms for POST, PUT, PATCH and DELETE only, within the app's size limit."""
    try:
        form = await request.post()
    except ValueError:  # a field that is not text in its declared charset
        return {}
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def authenticate(
    spec: CommandSpec, services: Services, request: web.Request, params: Params
) -> auth.Principal:
    mode = spec.auth
    if mode == "none":
        return auth.ANONYMOUS
    admin = auth.admin_from(services, request, params)
    if mode in ("admin", "admin_or_anonymous"):
        if admin is not None:
            return admin
        if mode == "admin_or_anonymous":
            return auth.ANONYMOUS
        if await auth.user_from(services, params) is not None:
            raise not_enough_privileges()
        raise auth_failed(spec.style)
    if mode == "sender_key":
        token = auth.bearer_token(request) or params.str("SenderAPIKey")
        if not token and spec.missing_key != 13:
            raise ApiError(spec.missing_key, "Missing SenderAPIKey", status=401, style="v1")
        principal = await auth.sender_key_from(services, token)
        if principal is None:
            raise ApiError(13, "Invalid SenderAPIKey", status=401, style="v1")
        return principal
    if mode == "user_or_admin" and admin is not None:
        return admin
    user = await auth.user_from(services, params)
    if user is None:
        raise auth_failed(spec.style)
    return user


def _rate_key(spec: CommandSpec, principal: auth.Principal, request: web.Request) -> str:
    if principal.api_key_id is not None:
        return f"api:key:{principal.api_key_id}"
    if principal.user_id is not None:
        return f"api:user:{principal.user_id}"
    return f"api:{principal.kind}:{request.remote}"


def _error_response(err: ApiError, style: str) -> web.Response:
    return json_response(err.body(style), status=err.status, headers=err.headers)


def _count(command: str, status: int, error_code: int) -> None:
    # Legacy errors are HTTP 200 as the documents require; error_code shows them (0 = success).
    metrics.API_REQUESTS.labels(command, str(status), str(error_code)).inc()


async def run(
    services: Services, request: web.Request, params: Params, spec: CommandSpec
) -> web.StreamResponse:
    try:
        response = await _run(services, request, params, spec)
    except ApiError as err:
        _count(spec.name, err.status, err.first_code)
        return _error_response(err, spec.style)
    _count(spec.name, response.status, 0)
    return response


async def _run(
    services: Services, request: web.Request, params: Params, spec: CommandSpec
) -> web.StreamResponse:
    """The command's response; any failure raised as the ApiError to answer."""
    principal: auth.Principal | None = None
    try:
        principal = await authenticate(spec, services, request, params)
        if spec.rate_limited:
            settings = services.settings.admin
            decision = await services.limiter.hit(
                _rate_key(spec, principal, request),
                settings.rate_limit_requests,
                settings.rate_limit_window,
            )
            if not decision.allowed:
                raise rate_limited(decision.retry_after, settings.rate_limit_requests)
        result = await spec.func(Call(services, params, principal, request, spec.name))
    except ApiError as err:
        if principal is not None:
            audit.record(spec.name, principal, request.remote, params, err.first_code)
        raise
    except Exception as exc:
        failure = _failure(spec, exc)
        if principal is not None:
            audit.record(spec.name, principal, request.remote, params, failure.first_code)
        raise failure from None
    if isinstance(result, web.StreamResponse):
        audit.record(spec.name, principal, request.remote, params, 0)
        return result
    audit.record(spec.name, principal, request.remote, params, 0, result)
    return json_response(result)


def _failure(spec: CommandSpec, exc: Exception) -> ApiError:
    """The answer to an exception a command did not turn into an ApiError itself."""
    own = spec.storage_error
    if _unavailable(exc) or (own is not None and isinstance(exc, SQLAlchemyError)):
        # The driver's message only: a statement's parameters may hold secrets.
        cause = getattr(exc, "orig", None) or exc
        log.warning("storage unavailable", command=spec.name, error=f"{type(cause).__name__}")
        return own or storage_unavailable()
    log.exception("command failed", command=spec.name)
    return internal_error()


async def handle_api_php(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    params = await read_params(request)
    name = (params.str("Command") or "").lower()
    spec = COMMANDS.get(name)
    if spec is None:
        err = unknown_command()
        # One label for every unknown name: a client must not grow the metric.
        _count("(unknown)", err.status, err.first_code)
        return _error_response(err, "legacy")
    return await run(services, request, params, spec)


def v1_handler(
    spec: CommandSpec, method: str
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        # The documents: PATCH takes its parameters from a JSON body only.
        params = await read_params(request, json_only=(method == "PATCH"))
        return await run(request.app[SERVICES], request, params, spec)

    return handle
