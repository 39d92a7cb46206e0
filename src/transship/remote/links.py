"""Paging: the `Link` header (RFC 8288) registries use for tag lists and referrers."""

from __future__ import annotations

from urllib.parse import urljoin


def next_link(header: str | None, current: str) -> str | None:
    """The `rel="next"` target of a `Link` header, absolute against `current`; None on the
    last page. `</v2/a/tags/list?n=2&last=b>; rel="next"` → `https://host/v2/a/tags/…`."""
    for part in (header or "").split(","):
        url, _, params = part.partition(";")
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "rel" and "next" in value.strip().strip('"').split():
                return urljoin(current, url.strip().strip("<>"))
    return None
