"""An application of another shape than the demo's: two streams, several event types in each,
and projections reading all of a stream, one subject of it, or two.

`shop(prefix)` builds it afresh with its domains prefixed, so tests sharing one server (the
session's cluster) each get streams of their own. `full_fold` is the reference a projection
must equal: the events it reads, folded in stream order, straight from the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from bus import App, Bus, Envelope, Event, Projection, ProjectionView, StreamSpec, matches


class Revenue(msgspec.Struct):
    orders: int = 0
    total: int = 0


class OrderView(msgspec.Struct):
    status: str = "new"
    total: int = 0
    events: int = 0


class Count(msgspec.Struct):
    count: int = 0


class Level(msgspec.Struct):
    quantity: int = 0
    moves: int = 0


@dataclass(frozen=True)
class Shop:
    app: App
    orders: str  # domains
    stock: str
    placed: type[Event]
    shipped: type[Event]
    cancelled: type[Event]
    added: type[Event]
    removed: type[Event]

    def events(self) -> list[type[Event]]:
        return [self.placed, self.shipped, self.cancelled, self.added, self.removed]


def shop(prefix: str = "", replicas: int = 1) -> Shop:
    orders, stock = f"{prefix}orders", f"{prefix}stock"

    class OrderPlaced(Event):
        __domain__ = orders
        __event_name__ = "placed"
        total: int

    class OrderShipped(Event):
        __domain__ = orders
        __event_name__ = "shipped"

    class OrderCancelled(Event):
        __domain__ = orders
        __event_name__ = "cancelled"
        reason: str = ""

    class StockAdded(Event):
        __domain__ = stock
        __event_name__ = "added"
        quantity: int

    class StockRemoved(Event):
        __domain__ = stock
        __event_name__ = "removed"
        quantity: int

    def aggregate(envelope: Envelope[Event]) -> str:
        return envelope.subject.split(".")[1]

    def add_revenue(state: Revenue, envelope: Envelope[Event]) -> Revenue:
        event = envelope.event
        assert isinstance(event, OrderPlaced)
        return Revenue(state.orders + 1, state.total + event.total)

    def order(state: OrderView, envelope: Envelope[Event]) -> OrderView:
        event = envelope.event
        total = event.total if isinstance(event, OrderPlaced) else state.total
        status = envelope.subject.rsplit(".", 1)[-1]
        return OrderView(status, total, state.events + 1)

    def count(state: Count, envelope: Envelope[Event]) -> Count:
        return Count(state.count + 1)

    def level(state: Level, envelope: Envelope[Event]) -> Level:
        event = envelope.event
        assert isinstance(event, StockAdded | StockRemoved)
        sign = 1 if isinstance(event, StockAdded) else -1
        return Level(state.quantity + sign * event.quantity, state.moves + 1)

    app = App(
        f"{prefix}shop",
        streams=[
            StreamSpec.for_domain(orders, replicas=replicas),
            StreamSpec.for_domain(stock, replicas=replicas),
        ],
        events=[OrderPlaced, OrderShipped, OrderCancelled, StockAdded, StockRemoved],
        projections=[
            Projection(
                f"{prefix}revenue", (f"{orders}.*.placed",), Revenue, lambda e: "all", add_revenue
            ),
            Projection(f"{prefix}shipments", (f"{orders}.*.shipped",), Count, aggregate, count),
            Projection(f"{prefix}orders", (f"{orders}.>",), OrderView, aggregate, order),
            Projection(
                f"{prefix}stock",
                (f"{stock}.*.added", f"{stock}.*.removed"),
                Level,
                aggregate,
                level,
            ),
        ],
    )
    return Shop(
        app, orders, stock, OrderPlaced, OrderShipped, OrderCancelled, StockAdded, StockRemoved
    )


def stream_of(projection: Projection[Any]) -> str:
    return projection.subjects[0].split(".")[0].upper()


async def full_fold(bus: Bus, projection: Projection[Any]) -> dict[str, Any]:
    """What `projection` must hold: every event it reads, folded from the stream itself."""
    state: dict[str, Any] = {}
    next_seq = 1
    while True:
        page = await bus.read(stream_of(projection), next_seq, 1000)
        for message in page:
            if not any(matches(s, message.subject) for s in projection.subjects):
                continue
            envelope = bus.open(message)
            key = projection.key(envelope)
            if key is not None:
                state[key] = projection.apply(state.get(key, projection.initial()), envelope)
        if len(page) < 1000:
            return state
        next_seq = page[-1].seq + 1


async def stored(bus: Bus, projection: Projection[Any]) -> dict[str, Any]:
    """Every key of the projection's current generation and its state."""
    view = ProjectionView(bus, projection)
    out: dict[str, Any] = {}
    cursor = None
    while True:
        page, cursor = await view.list(limit=1000, cursor=cursor)
        out.update(page)
        if cursor is None:
            return out
