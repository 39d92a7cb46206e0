"""Paging: the `Link` header (RFC 8288) registries use for tag lists and referrers."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from transship.errors import RegistryError


def next_link(header: str | None, current: str) -> str | None:
    """The `rel="next"` target of a `Link` header, absolute against `current`; None on the
    last page. `</v2/a/tags/list?n=2&last=b>; rel="next"` → `https://host/v2/a/tags/…`.

    A next page on another scheme, host or port is refused: the request for it would carry
    this registry's credentials (redirects drop them; a `Link` is followed as our own request),
    and stopping there silently would leave a list short."""
    for part in (header or "").split(","):
        url, _, params = part.partition(";")
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "rel" and "next" in value.strip().strip('"').split():
                target = urljoin(current, url.strip().strip("<>"))
                if _origin(target) != _origin(current):
                    raise RegistryError(
                        f"{_origin(current)} pages on to another host ({_origin(target)}); "
                        "refused, so that its credentials are not sent there"
                    )
                return target
    return None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()
