"""The NATS connection: nats-py's client plus a direct lane for our pull consumers.

nats-py turns every incoming message into a `Msg`, parses all its headers, and queues it to
a per-subscription task before a callback sees it. For a pull consumer that is most of the
cost of consuming (on the bench machine raw `fetch`+ack tops out near 11k msgs/s; the same
messages through a direct lane near 100k). A lane receives the raw protocol fields straight
from the parser; everything else (reconnects, resubscribing, publishing) stays nats-py's.

This leans on nats-py internals (`_process_msg`, the pending buffer). Every consumer test
runs through the lane, so a nats-py release that changes them fails the suite at once.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

# (subject, reply, payload, raw header block or None)
Lane = Callable[[bytes, bytes, bytes, bytes | None], None]


async def _unused(msg: Msg) -> None:  # pragma: no cover - lane subscriptions bypass callbacks
    return None


class Connection(Client):
    def __init__(self) -> None:
        super().__init__()
        self._lanes: dict[int, Lane] = {}

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        lane = self._lanes.get(sid)
        if lane is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        lane(subject, reply, data, headers or None)

    async def open_lane(self, subject: str, lane: Lane) -> Subscription:
        """Subscribe `lane` to `subject`; nats-py still resubscribes it after reconnects."""
        sub = await self.subscribe(subject, cb=_unused)
        self._lanes[sub._id] = lane
        return sub

    def close_lane(self, sub: Subscription) -> None:
        self._lanes.pop(sub._id, None)

    async def send(self, subject: str, payload: bytes, reply: str = "") -> None:
        """Publish without headers straight into the pending buffer (acks, pull requests).

        Buffered like any publish while disconnected; coalesced into one write with whatever
        else is pending when the flusher runs.
        """
        head = f"PUB {subject} {reply} {len(payload)}\r\n" if reply else f"PUB {subject} {len(payload)}\r\n"
        cmd = head.encode() + payload + b"\r\n"
        self._pending.append(cmd)
        self._pending_data_size += len(cmd)
        await self._flush_pending()


def parse_headers(raw: bytes) -> tuple[str | None, dict[str, str]]:
    """(status code or None, headers) from a raw `NATS/1.0 [code [text]]` header block."""
    lines = raw.decode("utf-8", "replace").split("\r\n")
    first = lines[0]
    status = first[9:12] if len(first) >= 12 else None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name:
            headers[name.strip()] = value.strip()
    if status is not None and len(first) > 13:
        headers.setdefault("Description", first[13:])
    return status, headers
