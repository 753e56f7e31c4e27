"""Where a running guard keeps its approval service, for the addons that build on it
(admin API and console, webhooks): ``server.approvals``, or an addon's ``service``."""

from __future__ import annotations

from typing import Any


def approval_service_of(server: Any) -> Any | None:
    """The ApprovalService of a GuardServer (None when no approvals service runs)."""
    service = getattr(server, "approvals", None)
    if service is not None and hasattr(service, "subscribe"):
        return service
    hooks = getattr(server, "hooks", None)
    for addon in getattr(hooks, "addons", ()):
        service = getattr(addon, "service", None)
        if service is not None and hasattr(service, "subscribe") and hasattr(service, "approve"):
            return service
    return None
