"""The one way a layout or archive is locked against a second writer: a `flock` taken without
waiting, refused with a `LayoutError` that says who holds it."""

from __future__ import annotations

import fcntl

from transship.errors import LayoutError


def lock_now(fd: int, held: str, *, shared: bool = False) -> None:
    """An exclusive (or `shared`) flock on `fd`, never waited for: held elsewhere, a
    LayoutError saying `held`. Released when `fd` is closed."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LayoutError(held) from None
