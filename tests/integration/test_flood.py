"""An agent that floods packets the guard answers itself, and never reads (issue 6 §7).

Every refused QoS 1 publish gets a PUBACK with a reason code and a reason string that the
guard writes itself; an agent that never reads would make those answers pile up in the
guard's memory if the guard kept reading. The guard must stop reading from that agent
while its write buffer to it is above the high-water mark, keep serving everyone else,
and carry on once the agent reads again, with nothing it accepted lost.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from typing import Any

from iot_guard.mqtt import PingReq, PingResp, PubAck, Publish, encode
from iot_guard.proxy.server import GuardThread
from iot_guard.tokens import issue_token
from tests.rawmqtt import RawMqtt

# The guard's own answers it may hold for one agent: the high-water mark (64 KiB) plus
# what one read of the agent's packets can produce (a 256 KiB read of ~3 KB refused
# publishes answered with ~1 KB PUBACKs: ~90 KB), with ample room to spare.
MAX_BUFFERED = 2 * 1024 * 1024
# Not a tenant of ops-agent. A long device name makes every refusal's reason string (which
# names the topic) long: the guard's answers fill the socket buffers in a few thousand
# publishes instead of a hundred thousand, which keeps the test quick.
FOREIGN = "tenants/globex/devices/" + "d" * 3000 + "/shadow/update"
PER_BLOCK = 100
ALLOWED = "tenants/acme/devices/therm-001/shadow/get"


def buffered_to_agents(guard: GuardThread) -> int:
    """Bytes the guard holds in its write buffers to agents, read on the guard's loop."""

    def total() -> int:
        return sum(
            link.agent.get_write_buffer_size()
            for link in guard.server.links
            if link.agent is not None and not link.agent.is_closing()
        )

    return guard.call(total)


def flood_until_the_guard_stops_reading(
    sock: socket.socket, block: bytes, guard: GuardThread, deadline_s: float
) -> dict[str, Any]:
    """Send ``block`` over and over without reading; return once the guard has not taken
    a byte for 1 s (it stopped reading). Fails as soon as the guard buffers too much."""
    # Blocking sends with a timeout: the sender waits in the kernel (without the GIL the
    # guard's thread needs) instead of spinning on a full socket.
    sock.settimeout(0.1)
    sent = 0
    offset = 0
    stalled_since: float | None = None
    most = 0
    next_probe = 0.0
    deadline = time.monotonic() + deadline_s
    while True:
        now = time.monotonic()
        if now >= next_probe:
            buffered = buffered_to_agents(guard)
            most = max(most, buffered)
            assert buffered <= MAX_BUFFERED, (
                f"the guard holds {buffered:,} bytes of answers for an agent that does not"
                f" read, after {sent:,} bytes sent: it keeps reading from that agent"
            )
            next_probe = now + 0.1
        assert now < deadline, (
            f"the guard still reads from an agent that does not read after {deadline_s} s"
            f" and {sent:,} bytes ({most:,} bytes buffered at most)"
        )
        try:
            n = sock.send(block[offset:])
        except TimeoutError:
            n = 0
        if n:
            sent += n
            offset = (offset + n) % len(block)
            stalled_since = None
            continue
        stalled_since = stalled_since or now
        if now - stalled_since >= 1.0:
            return {"sent": sent, "offset": offset, "most_buffered": most}


def test_flooding_agent_that_never_reads_is_paused_and_others_are_served(
    guard: GuardThread, guard_secret: bytes, mosquitto: Any
) -> None:
    flooder = RawMqtt(guard.port, level=5)
    # A small receive buffer: the guard's answers back up into the guard sooner. (Its
    # send buffer keeps the kernel's default: a small one slows loopback TCP to a crawl.)
    flooder.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    flooder.connect("ops-agent", issue_token(guard_secret, "ops-agent"), client_id="flooder")
    # Refused QoS 1 publishes; a flooder reuses packet ids without waiting.
    block = b"".join(
        encode(Publish(FOREIGN, b"{}", qos=1, packet_id=i + 1), 5) for i in range(PER_BLOCK)
    )
    try:
        flood = flood_until_the_guard_stops_reading(flooder.sock, block, guard, 60.0)
        assert flood["sent"] > len(block), "the flood never got going"

        # Another agent is served meanwhile.
        other = RawMqtt(guard.port, level=5)
        try:
            other.connect("ops-agent", issue_token(guard_secret, "ops-agent"), client_id="calm")
            other.send_packet(Publish(ALLOWED, b"", qos=1, packet_id=7))
            ack = other.read_until(PubAck, timeout=10)
            assert isinstance(ack, PubAck) and ack.packet_id == 7 and ack.reason_code < 0x80
        finally:
            other.close()

        # Once the flooder reads, the guard reads it again: every publish it sent is
        # answered (refused with 0x87 not authorized), then its PINGREQ.
        size = len(block) // PER_BLOCK
        cut = flood["sent"] % size  # the flood may have stopped inside a packet
        rest = block[flood["offset"] : flood["offset"] + size - cut] if cut else b""
        published = flood["sent"] // size + (1 if cut else 0)
        answers = read_while_sending(flooder, rest + encode(PingReq(), 5), 60.0)
        assert isinstance(answers[-1], PingResp), answers[-1]
        assert len(answers) - 1 == published
        assert all(isinstance(p, PubAck) and p.reason_code == 0x87 for p in answers[:-1])
        assert buffered_to_agents(guard) <= MAX_BUFFERED
    finally:
        flooder.close()


def read_while_sending(client: RawMqtt, data: bytes, deadline_s: float) -> list[Any]:
    """Send ``data`` while reading everything that comes back, until a PINGRESP."""
    sock = client.sock
    sock.setblocking(False)
    got: list[Any] = []
    deadline = time.monotonic() + deadline_s
    while not got or not isinstance(got[-1], PingResp):
        left = deadline - time.monotonic()
        assert left > 0, f"no PINGRESP within {deadline_s} s ({len(got):,} packets came)"
        readable, writable, _ = select.select([sock], [sock] if data else [], [], left)
        if writable:
            with contextlib.suppress(BlockingIOError):
                data = data[sock.send(data) :]
        if readable:
            chunk = sock.recv(1 << 20)
            assert chunk, f"the guard closed the connection after {len(got):,} packets"
            got += client.parser.feed(chunk)
    return got
