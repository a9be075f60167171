"""A stream's stored messages on a pattern, from a position on and then live.

Pages are read by direct get at the reader's own pace, so a slow reader holds at most one
page in memory and never misses a message; a plain subscription on the pattern wakes it when
something new arrives, and a reconnect only makes it read again from where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import nats.errors

from ._errors import BusTimeout
from ._nats.connection import Connection
from ._nats.direct import StoredMessage
from ._reader import read_messages

PAGE = 256  # messages a tail reads per round trip (and holds at most)
IDLE = 2.0  # seconds a caught-up tail waits for a wake-up before looking again


async def messages_on(
    nc: Connection, stream: str, pattern: str, listen: list[str], next_seq: int
) -> AsyncGenerator[StoredMessage, None]:
    """`stream`'s messages on `pattern` from `next_seq`, woken by new ones on `listen`."""
    wake = asyncio.Event()

    def ring(*_: object) -> None:
        wake.set()

    lanes = [await nc.open_lane(subject, ring) for subject in listen]
    try:
        while True:
            wake.clear()  # before reading: what arrives during the read rings again
            try:
                page = await read_messages(nc, stream, next_seq, PAGE, pattern)
            except BusTimeout:
                page = []  # NATS away: wait, then read from the same place
            for message in page:
                next_seq = message.seq + 1
                yield message
            if len(page) < PAGE:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE):
                        await wake.wait()
    finally:
        for lane in lanes:
            nc.close_lane(lane)
            with contextlib.suppress(nats.errors.Error):
                await lane.unsubscribe()
