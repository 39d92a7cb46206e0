"""The distribution API's error answers: a status and `{"errors": [{code, message, detail}]}`.

Codes and statuses are the ones the OCI distribution spec and CNCF distribution use, so every
client (docker, containerd, skopeo, crane, transship) reads them as it would from any registry.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}

#: code → (HTTP status, distribution's message)
CODES: dict[str, tuple[int, str]] = {
    "BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "BLOB_UPLOAD_UNKNOWN": (404, "blob upload unknown to registry"),
    "DIGEST_INVALID": (400, "provided digest did not match uploaded content"),
    "MANIFEST_UNKNOWN": (404, "manifest unknown"),
    "NAME_INVALID": (400, "invalid repository name"),
    "NAME_UNKNOWN": (404, "repository name not known to registry"),
    "TAG_INVALID": (400, "manifest tag did not match URI"),
    "PAGINATION_NUMBER_INVALID": (400, "invalid number of results requested"),
    "RANGE_INVALID": (416, "invalid content range"),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "UNSUPPORTED": (405, "The operation is unsupported."),
    "NOT_FOUND": (404, "not a distribution API endpoint"),
    "UNKNOWN": (500, "unknown error"),
    "UNAVAILABLE": (503, "service unavailable"),
}


class APIError(Exception):
    """Raised by a handler; rendered once by the error middleware."""

    def __init__(
        self,
        code: str,
        detail: Any = None,
        *,
        message: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        default_status, default_message = CODES[code]
        super().__init__(message or default_message)
        self.code = code
        self.status = status or default_status
        self.message = message or default_message
        self.detail = detail
        self.headers = headers or {}

    def response(self, *, head: bool = False) -> web.Response:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        body = json.dumps({"errors": [entry]}).encode()
        headers = {**API_VERSION_HEADER, **self.headers}
        if head:  # a HEAD answer carries the length of the body a GET would get, and no body
            headers["Content-Length"] = str(len(body))
            return web.Response(status=self.status, headers=headers, content_type=None)
        return web.Response(
            status=self.status, body=body, headers=headers, content_type="application/json"
        )
