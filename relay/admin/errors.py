"""API errors: raised by commands, turned into the documents' error shapes in one place.

Two shapes exist in the documents:
- legacy ``/api.php`` commands: ``{"Success": false, "ErrorCode": 2}`` (or a list of codes,
  optionally with ``ErrorText``/``ErrorMessage``), HTTP 200;
- v1 REST routes and the user sender-domain commands:
  ``{"Errors": [{"Code": 2, "Message": "..."}]}`` with an HTTP status.
A command raises ApiError with exactly the codes, list-ness, texts and status its document
gives; ``render`` below is the only place that builds the body.
"""

from __future__ import annotations

from typing import Any

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
    ) -> None:
        super().__init__(code)
        self.code = code
        self.text = text
        self.status = status
        self.text_key = text_key
        self.extra = extra or {}
        # None = whatever the command's style is; "legacy" | "v1" to force.
        self.style = style

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
