"""API errors: raised by commands, turned into the documents' error shapes in one place.

Two shapes exist in the documents:
- legacy ``/api.php`` commands: ``{"Success": false, "ErrorCode": 2}`` (or a list of codes,
  optionally with ``ErrorText``/``ErrorMessage``), HTTP 200;
- v1 REST routes and the user sender-domain commands:
  ``{"Errors": [{"Code": 2, "Message": "..."}]}`` with an HTTP status.
A command raises ApiError with exactly the codes, list-ness, texts and status its document
gives; ``ApiError.body`` is the only place that builds an error body. The dispatcher's own
answers (rate limit, unknown command, storage unavailable, internal error) are ApiErrors made by
the functions at the end of this module.
"""

from __future__ import annotations

from typing import Any

INTERNAL_ERROR = 99996  # not in the documents: internal error or storage unavailable
AUTH_FAILED = 99998  # Oempro: "Authentication failure or session expired"
NOT_ENOUGH_PRIVILEGES = 99999  # Oempro: "Not enough privileges"
UNKNOWN_COMMAND = 99997  # not in the documents; see docs/api.md


class ApiError(Exception):
    def __init__(
        self,
        code: int | list[int],
        text: str | list[str] | None = None,
        *,
        status: int = 200,
        text_key: str = "ErrorText",
        extra: dict[str, Any] | None = None,
        style: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code)
        self.code = code
        self.text = text
        self.status = status
        self.text_key = text_key
        self.extra = extra or {}
        # None = whatever the command's style is; "legacy" | "v1" to force.
        self.style = style
        self.headers = headers  # HTTP response headers (Retry-After)

    @property
    def first_code(self) -> int:
        """The code a metric counts the failure under (the first of a list)."""
        return self.code[0] if isinstance(self.code, list) else self.code

    def body(self, style: str) -> dict[str, Any]:
        style = self.style or style
        if style == "v1":
            codes = self.code if isinstance(self.code, list) else [self.code]
            texts = self.text if isinstance(self.text, list) else [self.text or ""] * len(codes)
            return {
                "Errors": [{"Code": c, "Message": m} for c, m in zip(codes, texts, strict=False)],
                **self.extra,
            }
        body: dict[str, Any] = {"Success": False, "ErrorCode": self.code}
        if self.text is not None:
            body[self.text_key] = self.text
        body.update(self.extra)
        return body


def auth_failed(style: str = "legacy") -> ApiError:
    if style == "v1":
        return ApiError(0, "Authentication failed", status=401, style="v1")
    return ApiError(AUTH_FAILED, "Authentication failure or session expired")


def not_enough_privileges() -> ApiError:
    return ApiError(NOT_ENOUGH_PRIVILEGES, "Not enough privileges")


def unknown_command() -> ApiError:
    return ApiError(UNKNOWN_COMMAND, "Invalid command", style="legacy")


def rate_limited(retry_after: int, requests: int) -> ApiError:
    """The documents' 429, in the v1 shape on every route (``/api.php`` access included)."""
    return ApiError(
        429,
        f"Too many requests. Wait for {retry_after} seconds for another {requests} attempts.",
        status=429,
        style="v1",
        headers={"Retry-After": str(retry_after)},
    )


def storage_unavailable(extra: dict[str, Any] | None = None) -> ApiError:
    """The database cannot be reached: nothing was done, try again (HTTP 503)."""
    return ApiError(
        INTERNAL_ERROR, "Temporary failure, please try again later", status=503, extra=extra
    )


def internal_error() -> ApiError:
    """Anything unexpected: logged by the dispatcher, never shown (HTTP 500)."""
    return ApiError(INTERNAL_ERROR, "Internal error", status=500)
