"""Reading stored messages by stream sequence with JetStream's batched direct get.

One request returns up to `limit` messages followed by an end-of-batch status, so paging
through a stream costs one round trip per page and creates no consumer.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import nats.errors

from . import headers as h
from .connection import Connection, parse_headers
from .errors import BusTimeout, StreamError, StreamNotFound

_encode = msgspec.json.Encoder().encode


class StoredMessage(msgspec.Struct, frozen=True):
    """A message as the stream holds it: its own subject, headers and bytes."""

    stream: str
    seq: int
    subject: str
    time: str
    data: bytes
    headers: dict[str, str]
    pending: int = 0  # messages after this one that the read would match (direct get only)


async def read_messages(
    nc: Connection,
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
    return await _direct_get(nc, stream, request, limit, timeout)


async def read_last(
    nc: Connection, stream: str, subjects: list[str], limit: int = 1000, timeout: float = 5.0
) -> list[StoredMessage]:
    """The last message on each subject matching `subjects` (wildcards allowed), up to `limit`."""
    request = {"multi_last": subjects, "batch": limit}
    return await _direct_get(nc, stream, request, limit, timeout)


async def _direct_get(
    nc: Connection, stream: str, request: dict[str, object], limit: int, timeout: float
) -> list[StoredMessage]:
    """One batched direct get, answered on a lane until its end-of-batch status."""
    out: list[StoredMessage] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def receive(subject: bytes, reply: bytes, data: bytes, raw: bytes | None) -> None:
        status, hdrs = parse_headers(raw) if raw else (None, {})
        if done.done():
            return
        if status is None:
            out.append(_stored(data, hdrs))
            if len(out) >= limit:
                done.set_result(None)
        elif status in ("204", "404"):  # end of batch, or nothing matched
            done.set_result(None)
        elif status == "503":
            done.set_exception(StreamNotFound(stream))
        else:
            reason = hdrs.get(h.DESCRIPTION, "")
            done.set_exception(StreamError(f"direct get on {stream!r}: {status} {reason}"))

    inbox = nc.new_inbox()
    sub = await nc.open_lane(inbox, receive)
    try:
        await nc.send(f"$JS.API.DIRECT.GET.{stream}", _encode(request), inbox)
        async with asyncio.timeout(timeout):
            await done
    except TimeoutError:
        raise BusTimeout(f"direct get on {stream!r} did not answer in {timeout:g}s") from None
    finally:
        nc.close_lane(sub)
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return out


def _stored(data: bytes, hdrs: dict[str, str]) -> StoredMessage:
    """The message a direct get returned; the headers about storage move to fields."""
    pop = hdrs.pop
    stream, seq, subject = (
        pop("Nats-Stream", ""),
        pop("Nats-Sequence", "0"),
        pop("Nats-Subject", ""),
    )
    stamp, pending = pop("Nats-Time-Stamp", ""), pop("Nats-Num-Pending", "0")
    pop("Nats-Last-Sequence", None)
    return StoredMessage(stream, int(seq), subject, stamp, data, hdrs, int(pending))
