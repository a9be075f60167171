"""Who events are published for: the edge authenticates a caller and publishes within
`acting_as(name)`, so every event of that request carries `Bus-Principal` (an audit trail
no client can forge: the header comes from here, never from what a client sent)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_acting: ContextVar[str | None] = ContextVar("bus_principal", default=None)


@contextlib.contextmanager
def acting_as(principal: str) -> Iterator[None]:
    """Events published inside carry `principal` in their `Bus-Principal` header."""
    token = _acting.set(principal)
    try:
        yield
    finally:
        _acting.reset(token)


def current_principal() -> str | None:
    return _acting.get()
