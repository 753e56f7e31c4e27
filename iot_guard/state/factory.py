"""Open the state a guard was told to use (``run --state``): a directory or a ``redis://`` URL."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .protocols import Stores
from .records import StateError
from .sqlite import DB_NAME, EmbeddedStores

REDIS_SCHEMES = ("redis", "rediss", "unix")


def default_state_dir(audit_path: Path | str | None) -> Path:
    """Where the state lives when ``--state`` is not given: ``state/`` beside the audit
    log (the operator already chose that place to keep the guard's records). With the audit
    log on stderr there is no such place: ``$XDG_STATE_HOME/iot-guard`` (default
    ``~/.local/state/iot-guard``), the XDG Base Directory spec's home for state that should
    persist between restarts."""
    if audit_path is not None:
        return Path(audit_path).expanduser().absolute().parent / "state"
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "iot-guard"


def _is_url(spec: str) -> bool:
    return "://" in spec


async def open_state(
    spec: str | Path, *, clock: Callable[[], float] = time.time, poll_s: float = 0.25
) -> Stores:
    """Open (creating if needed) the state at ``spec``: a directory, or a URL.

    A directory holds ``state.sqlite3`` (created with mode 0700: it holds who approved what).
    ``redis://`` / ``rediss://`` / ``unix://`` URLs are the scale-out backend (``redis.py``).
    Errors are ``StateError`` with a one-line message naming the place. The flags' view is
    loaded before this returns, so the first packet already sees every kill switch.
    """
    if isinstance(spec, str) and _is_url(spec):
        scheme = urlsplit(spec).scheme.lower()
        if scheme not in REDIS_SCHEMES:
            raise StateError(f"unknown state URL scheme {scheme!r}; give a directory or "
                             "redis://HOST:PORT/DB")
        from .redis import RedisStores

        # The buckets run on Redis time unless a clock is injected (tests).
        shared = RedisStores(spec, clock=None if clock is time.time else clock, poll_s=poll_s)
        try:
            return await shared.open()
        except BaseException:
            await shared.close()
            raise
    directory = Path(spec).expanduser()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"{directory}: cannot create the state directory: {exc}") from exc
    if not directory.is_dir():
        raise StateError(f"{directory}: not a directory")
    state = EmbeddedStores(directory / DB_NAME, clock=clock, poll_s=poll_s)
    try:
        return await state.open()
    except BaseException:
        await state.close()
        raise
