"""Process limits the guard needs raised before it serves thousands of sessions."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("iot_guard.proxy")


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit (RLIMIT_NOFILE) to the hard one; return the soft
    limit now in force.

    Every session holds two sockets in the guard (agent and upstream); the usual soft
    limit of 1024 would refuse connections past ~500 sessions with EMFILE, while the hard
    limit (often 2^20 or more) is ours to take without privileges.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or soft == resource.RLIM_INFINITY:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:  # e.g. an infinite hard limit some kernels refuse
        log.warning("open files limit stays at %d (cannot raise it to %d: %s)", soft, hard, exc)
        return soft
    return hard
