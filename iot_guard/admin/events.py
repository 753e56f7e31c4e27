"""Server-sent events (the WHATWG HTML "server-sent events" format) for the console.

One hub per admin server; any module publishes named events (``approval`` from the
approvals service, later kill switch notices). Each connection has a bounded queue: a
slow reader is never waited for -- when its queue is full it is told to ``resync`` (fetch
the full list again) instead, and the guard goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("iot_guard.admin")

QUEUE_SIZE = 256
HEARTBEAT_S = 15.0
RETRY_MS = 3000
_CLOSE = object()
_RESYNC = object()


def format_event(event: str, data: Any) -> bytes:
    """One event: compact JSON holds no newline, so a single ``data:`` line suffices."""
    payload = json.dumps(data, separators=(",", ":"), default=str)
    return f"event: {event}\ndata: {payload}\n\n".encode()


class EventHub:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._queues: set[asyncio.Queue[object]] = set()

    @property
    def connections(self) -> int:
        return len(self._queues)

    def publish(self, event: str, data: Any) -> None:
        """Never blocks: a full queue gets a resync marker instead of the event."""
        item = (event, data)
        for queue in self._queues:
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(_RESYNC)

    async def close(self) -> None:
        for queue in self._queues:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(_CLOSE)

    async def stream(self, request: web.Request, until: float) -> web.StreamResponse:
        """Send events to this client until it leaves, the server stops or ``until``
        (its token's expiry: a stream may not outlive the token that opened it)."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # proxies: do not buffer the stream
            }
        )
        await response.prepare(request)
        queue: asyncio.Queue[object] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        try:
            await response.write(f"retry: {RETRY_MS}\n\n".encode())
            await response.write(format_event("hello", {"server_time": self.clock()}))
            last_write = self.clock()
            while True:
                left = until - self.clock()
                if left <= 0:
                    await response.write(format_event("expired", {"detail": "token expired"}))
                    break
                try:
                    # Wake at least every second: a client that left is noticed by its
                    # transport closing, not only at the next heartbeat write.
                    item = await asyncio.wait_for(queue.get(), min(1.0, left))
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break
                    if self.clock() - last_write >= HEARTBEAT_S:
                        await response.write(b": ping\n\n")
                        last_write = self.clock()
                    continue
                if item is _CLOSE:
                    break
                if item is _RESYNC:
                    item = ("resync", {"server_time": self.clock()})
                assert isinstance(item, tuple)
                await response.write(format_event(*item))
                last_write = self.clock()
        except ConnectionResetError:
            pass  # the client went away
        finally:
            self._queues.discard(queue)
        return response
