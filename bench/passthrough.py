"""The floor: a process that only copies bytes between the agent and the broker.

Run beside the guard, on the same event loop (uvloop) and with the same backpressure,
it measures what any proxy process costs on this machine (two more socket hops and the
wake-ups of one more process) before a single packet is parsed, judged or audited. The
guard's figures minus the floor's are what the guard's own work costs.

    python -m bench.floor LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class _Side(asyncio.Protocol):
    """One connection of a pair; what it reads is written to the other, in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []  # for this side, read before it was open

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        elif peer is not None:
            peer.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        # close() writes what is buffered first, as the guard's closes do.
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # Backpressure as the guard's: the side that fills a buffer stops being read.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def serve(listen_port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()

    def accepted() -> _Side:
        agent, broker = _Side(), _Side()
        agent.peer, broker.peer = broker, agent

        async def open_upstream() -> None:
            try:
                await loop.create_connection(lambda: broker, "127.0.0.1", upstream_port)
            except OSError:
                if agent.transport is not None:
                    agent.transport.close()
                return
            assert broker.transport is not None
            if broker.pending:
                broker.transport.write(b"".join(broker.pending))
                broker.pending.clear()

        loop.create_task(open_upstream())
        return agent

    server = await loop.create_server(accepted, "127.0.0.1", listen_port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))
