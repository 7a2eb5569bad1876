"""The job API's error answers: one exception, one JSON shape, every code documented in docs/jobs.md.

Every failure a client can cause is an :class:`ApiError` carrying its HTTP
status and an ``error_code`` in the style of the VOD API this service mimics
(``VOD.10062`` unknown asset, ``VOD.10083`` cancel of a task that is no longer
queued); the body is always ``{"error_code": ..., "error_msg": ...}``.
"""

from __future__ import annotations

#: error_code -> (HTTP status, default message)
CODES: dict[str, tuple[int, str]] = {
    "VOD.10001": (401, "Missing or invalid X-Auth-Token"),
    "VOD.10002": (403, "The token is not valid for this project"),
    "VOD.10053": (400, "Invalid request parameter"),
    "VOD.10054": (400, "The request body is not valid JSON"),
    "VOD.10062": (400, "Media asset or resource does not exist"),
    "VOD.10083": (400, "The task is no longer queued and cannot be cancelled"),
    "VOD.10084": (409, "The audio asset is not ready"),
    "VOD.10085": (413, "The request body is too large"),
    "VOD.10086": (400, "The uploaded file is not an MP4-family or FLV file"),
    "VOD.10087": (411, "Content-Length is required"),
    "VOD.10404": (404, "No such endpoint"),
    "VOD.10405": (405, "Method not allowed"),
    "VOD.10500": (500, "Internal error"),
}

INVALID_TOKEN = "VOD.10001"
WRONG_PROJECT = "VOD.10002"
INVALID_PARAMETER = "VOD.10053"
INVALID_JSON = "VOD.10054"
UNKNOWN_ASSET = "VOD.10062"
NOT_QUEUED = "VOD.10083"
NOT_READY = "VOD.10084"
TOO_LARGE = "VOD.10085"
NOT_MEDIA = "VOD.10086"
LENGTH_REQUIRED = "VOD.10087"
NO_ROUTE = "VOD.10404"
BAD_METHOD = "VOD.10405"
INTERNAL = "VOD.10500"


class ApiError(Exception):
    """A client-visible failure: HTTP status, error code, message."""

    def __init__(self, code: str, message: str | None = None, *, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        default_status, default_message = CODES[code]
        super().__init__(message or default_message)
        self.code = code
        self.status = status or default_status
        self.message = message or default_message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error_code": self.code, "error_msg": self.message}
