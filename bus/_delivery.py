"""One message as a consumer's lane hands it over (bus._nats.connection): no nats-py `Msg`,
headers parsed once, the ack subject kept as the bytes it is written back as."""

from __future__ import annotations

from ._followups import Run


class Delivery:
    """One message as the lane hands it over: no nats-py Msg, headers parsed once, the ack
    subject kept as the bytes it is written back as."""

    __slots__ = ("data", "headers", "reply", "run", "subject")

    def __init__(self, subject: str, reply: bytes, data: bytes, headers: dict[str, str]) -> None:
        self.subject, self.reply, self.data, self.headers = subject, reply, data, headers
        self.run: Run | None = None  # what its handler publishes (bus._followups)
