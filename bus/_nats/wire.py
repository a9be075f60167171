"""What goes on the wire: an event ready to be sent, and the NATS header block both ways.

Owned here, below everything that publishes (the publisher, the dead-letter copy, the
projector's writes) and below the reading of publish acks, so that none of them imports
another for it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from bus._errors import ConfigError


class Outgoing(msgspec.Struct, frozen=True, gc=False):
    """One event ready for the wire.

    Not tracked by the garbage collector (it holds no cycles: our header dict, bytes, a span):
    a publish_many of 20,000 held as many tracked objects, and full collections in the middle
    of it cost up to 30 ms."""

    subject: str
    payload: bytes
    headers: dict[str, str]
    event_id: str
    span: Any = None  # the PRODUCER span while tracing is on, ended at the ack
    rerun_since: int = 0  # a handler's rerun: its message's stored time (see bus._reruns)


def encode_headers(headers: dict[str, str]) -> bytes:
    """A NATS header block; refuses line breaks, which would forge extra headers."""
    block = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
    if block.count("\n") != len(headers) or block.count("\r") != len(headers):
        raise ConfigError("header names and values cannot contain line breaks")
    return b"NATS/1.0\r\n" + block.encode() + b"\r\n"


def parse_headers(raw: bytes) -> tuple[str | None, dict[str, str]]:
    """(status code or None, headers) from a raw `NATS/1.0 [code [text]]` header block.

    Lines are `Name: Value` as every NATS client writes them; `Name:Value` is accepted too.
    """
    lines = raw.decode("utf-8", "replace").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(": ")
        if not sep:
            name, sep, value = line.partition(":")
            if not sep:
                continue  # the blank lines that end the block
            name, value = name.strip(), value.strip()
        headers[name] = value
    first = lines[0]
    if len(first) < 12:
        return None, headers
    if len(first) > 13:
        headers.setdefault("Description", first[13:])
    return first[9:12], headers
