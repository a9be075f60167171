"""What the reply subject of a JetStream delivery says about the message:

    $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>

or, in the newer form, with `<domain>.<account hash>` before the stream and a token after.
"""

from __future__ import annotations


def _offset(tokens: list[bytes]) -> int:
    return 0 if len(tokens) == 9 else 2


def sequence_and_delivered(reply: bytes) -> tuple[int, int]:
    """(stream sequence, times delivered): what a consumer needs of every message."""
    tokens = reply.split(b".")
    at = _offset(tokens)
    return int(tokens[at + 5]), int(tokens[at + 4])


def sequences_and_pending(reply: bytes) -> tuple[int, int, int]:
    """(stream sequence, consumer sequence, messages pending after it): what an ordered
    consumer checks its deliveries by."""
    tokens = reply.split(b".")
    at = _offset(tokens)
    return int(tokens[at + 5]), int(tokens[at + 6]), int(tokens[at + 8])


def stored_at(reply: bytes) -> int:
    """When the message was stored (ns since the epoch)."""
    tokens = reply.split(b".")
    return int(tokens[_offset(tokens) + 7])
