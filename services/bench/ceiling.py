"""What this machine allows at all: the messaging scenario's work with no library semantics.

Neither loop is something to ship: publishing sends header blocks made in advance and only
counts acks (no ids, no encoding, no results, no retry), consuming pulls and acks without
parsing a header or decoding a payload. They share the bench's server and connection, so
the distance between them and `bus` is what the library's guarantees cost, and the distance
between them and raw nats-py is the room there was.
"""

from __future__ import annotations

import asyncio
import uuid

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from bus import Bus

from .workload import FETCH_BATCH, bench_event

_PAYLOAD = msgspec.json.encode(bench_event(0))


async def publish_ceiling(bus: Bus, n: int) -> None:
    """Pipelined publishes of prepared messages; done when every ack is in."""
    nc = bus.nc
    blocks = [
        f"NATS/1.0\r\nNats-Msg-Id: {uuid.uuid4()}\r\nBus-Event-Type: BenchEvent\r\n\r\n".encode()
        for _ in range(n)
    ]
    acked = 0
    done = asyncio.Event()

    def on_ack(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        nonlocal acked
        acked += 1
        if acked == n:
            done.set()

    inbox = nc.new_inbox()
    sub = await nc.open_lane(f"{inbox}.*", on_ack)
    for i, block in enumerate(blocks):
        nc.buffer(f"bench.x{i}.created", _PAYLOAD, f"{inbox}.{i}", block)
        if i % 256 == 255:
            nc.flush_soon()
            await asyncio.sleep(0)
    nc.flush_soon()
    await done.wait()
    nc.close_lane(sub)
    await sub.unsubscribe()


async def consume_ceiling(
    bus: Bus, js: JetStreamContext, stream: str, durable: str, n: int
) -> None:
    """Pull `n` stored messages in batches and ack each; nothing is parsed or decoded. The
    durable is made on raw nats-py's connection (`js`), the pulls go over the bus's."""
    nc = bus.nc
    await js.add_consumer(
        stream, ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT)
    )
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
    request = msgspec.json.encode({"batch": FETCH_BATCH, "expires": 5_000_000_000})
    inbox = nc.new_inbox()
    seen = 0
    asked = 2 * FETCH_BATCH
    done = asyncio.Event()

    def on_message(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        nonlocal seen, asked
        if not reply:  # a status (end of a pull)
            return
        nc.buffer(reply.decode(), b"+ACK")
        seen += 1
        if seen == n:
            done.set()
        elif asked - seen <= FETCH_BATCH and asked < n:
            asked += FETCH_BATCH
            nc.buffer(next_subject, request, inbox)
        nc.flush_soon()

    sub = await nc.open_lane(inbox, on_message)
    for _ in range(2):
        nc.buffer(next_subject, request, inbox)
    nc.flush_soon()
    await done.wait()
    nc.close_lane(sub)
    await sub.unsubscribe()
