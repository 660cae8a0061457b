"""The exceptions the SDK raises.

Every refusal coved answers becomes an :class:`ApiError` subclass chosen by the API's stable
``code`` (and, for codes this version does not know, by the HTTP status), carrying the status,
the code, coved's message (a whole sentence) and the request id to quote in a report.
"""

from __future__ import annotations

import json
from typing import Any


class CoveError(Exception):
    """Anything this SDK raises."""


class ConnectionFailed(CoveError):
    """coved could not be reached, or the connection broke mid-request."""


class ApiError(CoveError):
    """coved refused the request."""

    def __init__(
        self, status: int, code: str, message: str, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, message={self.message!r})"


class BadRequest(ApiError):
    """400: a setting out of range, a malformed path, a refused argument."""


class Unauthorized(ApiError):
    """401: no key, or a key coved does not know (revoked, mistyped)."""


class Forbidden(ApiError):
    """403: the key's scope does not allow this (a tenant's key on an operator's route)."""


class NotFound(ApiError):
    """404: no such sandbox, snapshot, file or command — or one another tenant owns."""


class Conflict(ApiError):
    """409: the sandbox is not in a state that allows it, or a name or tag is taken."""


class Unprocessable(ApiError):
    """422: well-formed but impossible (a program that does not exist in the guest, …)."""


class ProgramNotFound(Unprocessable):
    """The command's program is not in the guest (a shell would exit 127)."""


class QuotaExceeded(ApiError):
    """429 quota_exceeded: the tenant is at one of its quotas (the message names it)."""


class RateLimited(ApiError):
    """429 rate_limited: the key sent more requests a second than coved allows."""


class Timeout(ApiError):
    """504 timeout: the guest did not answer in time."""


class Unavailable(ApiError):
    """503 unavailable: the sandbox's VM or the host cannot serve this now."""


class NoSpace(ApiError):
    """507 no_space: the sandbox's disk is full."""


class PortClosed(ApiError):
    """502 port_closed: nothing listens on the sandbox's port."""


_BY_CODE: dict[str, type[ApiError]] = {
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
    "unprocessable": Unprocessable,
    "program_not_found": ProgramNotFound,
    "program_not_runnable": Unprocessable,
    "quota_exceeded": QuotaExceeded,
    "rate_limited": RateLimited,
    "timeout": Timeout,
    "unavailable": Unavailable,
    "no_space": NoSpace,
    "port_closed": PortClosed,
}

_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: Unprocessable,
    429: RateLimited,
    502: PortClosed,
    503: Unavailable,
    504: Timeout,
    507: NoSpace,
}


def api_error(status: int, body: bytes | str | dict[str, Any] | None) -> ApiError:
    """The exception for coved's answer ``status`` with error ``body`` (its JSON error, or
    anything else a proxy in between might have said)."""
    data: Any = body
    if isinstance(body, (bytes, str)):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        code = str(data.get("code") or "unknown")
        message = data["message"]
        rid = data.get("request_id")
        request_id = rid if isinstance(rid, str) else None
    else:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        code, message, request_id = "unknown", text.strip() or f"HTTP {status}", None
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, ApiError)
    return cls(status, code, message, request_id)
