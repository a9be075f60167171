"""Reading stored messages by stream sequence with JetStream's batched direct get.

One request returns up to `limit` messages followed by an end-of-batch status, so paging
through a stream costs one round trip per page and creates no consumer.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from . import headers as h
from .errors import BusTimeout, StreamError, StreamNotFound

# Headers a direct get adds about the stored message and the batch, not the event's own.
_STORED_HEADERS = (
    "Nats-Stream",
    "Nats-Sequence",
    "Nats-Time-Stamp",
    "Nats-Subject",
    "Nats-Num-Pending",
    "Nats-Last-Sequence",
)
_encode = msgspec.json.Encoder().encode


class StoredMessage(msgspec.Struct, frozen=True):
    """A message as the stream holds it: its own subject, headers and bytes."""

    stream: str
    seq: int
    subject: str
    time: str
    data: bytes
    headers: dict[str, str]


async def read_messages(
    nc: NATS,
    stream: str,
    from_seq: int = 1,
    limit: int = 100,
    subject: str | None = None,
    timeout: float = 5.0,
) -> list[StoredMessage]:
    """Up to `limit` messages with sequence >= `from_seq` (matching `subject` if given)."""
    if from_seq < 1 or limit < 1:
        raise ValueError("from_seq and limit must be >= 1")
    request: dict[str, object] = {"seq": from_seq, "batch": limit}
    if subject:
        request["next_by_subj"] = subject
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await nc.subscribe(inbox, cb=_put(queue))
    out: list[StoredMessage] = []
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", _encode(request), reply=inbox)
        async with asyncio.timeout(timeout):
            while True:
                msg = await queue.get()
                hdrs = msg.headers or {}
                status = hdrs.get(h.STATUS)
                if status is None:
                    out.append(_stored(msg, hdrs))
                    if len(out) >= limit:
                        break
                elif status in ("204", "404"):  # end of batch, or nothing at/after from_seq
                    break
                elif status == "503":
                    raise StreamNotFound(stream)
                else:
                    raise StreamError(
                        f"direct get on {stream!r}: {status} {hdrs.get(h.DESCRIPTION)}"
                    )
    except TimeoutError:
        raise BusTimeout(f"direct get on {stream!r} did not answer in {timeout:g}s") from None
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return out


def _put(queue: asyncio.Queue[Msg]):  # type: ignore[no-untyped-def]
    async def cb(msg: Msg) -> None:
        queue.put_nowait(msg)

    return cb


def _stored(msg: Msg, hdrs: dict[str, str]) -> StoredMessage:
    own = {k: v for k, v in hdrs.items() if k not in _STORED_HEADERS}
    return StoredMessage(
        stream=hdrs.get("Nats-Stream", ""),
        seq=int(hdrs.get("Nats-Sequence", "0")),
        subject=hdrs.get("Nats-Subject", ""),
        time=hdrs.get("Nats-Time-Stamp", ""),
        data=msg.data,
        headers=own,
    )
