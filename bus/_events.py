"""Domain events: the `Event` base, event ids, and the registry that maps wire types to classes.

An event class names where it lives on the wire with class attributes:

    class TaskCreated(Event):
        __domain__ = "tasks"          # stream TASKS, subjects tasks.>
        __event_name__ = "created"    # subject tasks.<id>.created
        __event_version__ = 2         # optional, default 1
        title: str

Its type name (header `Bus-Event-Type`) is the class name unless `__event_type__` says
otherwise. Older stored versions decode through upcasters registered on the registry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from ._errors import ConfigError, DecodeError
from ._subjects import validate_token

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


# Type checkers then see every subclass as frozen and keyword-only, as msgspec makes it (a
# subclass need not repeat `frozen=True`); nothing happens at run time.
if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_: object) -> Callable[[type], type]:
        return lambda cls: cls


@dataclass_transform(frozen_default=True, kw_only_default=True)
class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every domain event: a frozen msgspec Struct holding only domain fields."""

    __domain__: ClassVar[str] = ""
    __event_name__: ClassVar[str] = ""
    __event_version__: ClassVar[int] = 1
    __event_type__: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__event_type__" not in cls.__dict__:
            cls.__event_type__ = cls.__name__
        if cls.__domain__:
            validate_token(cls.__domain__, f"{cls.__name__}.__domain__")
        if cls.__event_name__:
            validate_token(cls.__event_name__, f"{cls.__name__}.__event_name__")
        if not isinstance(cls.__event_version__, int) or cls.__event_version__ < 1:
            raise ConfigError(f"{cls.__name__}.__event_version__ must be an int >= 1")


class _Entropy:
    """Random hex digits read from the OS a page at a time (one syscall per ~200 ids)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._page = ""
        self._at = 0

    def take(self, n: int) -> str:
        if self._at + n > len(self._page):
            self._page, self._at = os.urandom(2048).hex(), 0
        self._at += n
        return self._page[self._at - n : self._at]


_entropy = _Entropy()
os.register_at_fork(after_in_child=_entropy.reset)  # a forked child must not reuse the page
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}  # 0b10xx
_millisecond: list[Any] = [-1, ""]  # the last millisecond and its id prefix (one per ms)


def new_event_id() -> str:
    """A UUIDv7 string: time-ordered, so ids sort by creation and index well.

    Written as text directly (48-bit milliseconds, version 7, variant 10, 74 random bits):
    the timestamp's digits change once a millisecond, so they are formatted once for it."""
    ms = time.time_ns() // 1_000_000
    if ms != _millisecond[0]:
        stamp = f"{ms:012x}"
        _millisecond[:] = [ms, f"{stamp[:8]}-{stamp[8:]}-7"]
    r = _entropy.take(19)
    return f"{_millisecond[1]}{r[:3]}-{_VARIANT[r[3]]}{r[4:7]}-{r[7:]}"


class EventRegistry:
    """Maps (type name, version) and (domain, event name) to event classes.

    One registry per Bus (or per app), never a global: tests build their own.
    """

    def __init__(self, events: Iterable[type[Event]] = ()) -> None:
        self._by_type: dict[str, type[Event]] = {}
        self._by_subject: dict[tuple[str, str], type[Event]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        for cls in events:
            self.register(cls)

    def register(self, cls: type[Event]) -> type[Event]:
        """Add `cls` (idempotent); usable as a class decorator."""
        if not (isinstance(cls, type) and issubclass(cls, Event)):
            raise ConfigError(f"{cls!r} is not an Event subclass")
        known = self._by_type.get(cls.__event_type__)
        if known is cls:
            return cls
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ConfigError(
                f"event type {cls.__event_type__!r} is already registered to {known.__qualname__}"
            )
        self._by_type[cls.__event_type__] = cls
        if cls.__domain__ and cls.__event_name__:
            self._by_subject[(cls.__domain__, cls.__event_name__)] = cls
        return cls

    def upcaster(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a function turning version `from_version` fields into `from_version + 1`."""

        def decorator(fn: Upcaster) -> Upcaster:
            self._upcasters[(event_type, from_version)] = fn
            return fn

        return decorator

    def __contains__(self, cls: object) -> bool:
        return (
            isinstance(cls, type) and self._by_type.get(getattr(cls, "__event_type__", "")) is cls
        )

    def __iter__(self) -> Any:
        return iter(self._by_type.values())

    def __len__(self) -> int:
        return len(self._by_type)

    def by_type(self, event_type: str) -> type[Event]:
        try:
            return self._by_type[event_type]
        except KeyError:
            raise DecodeError(f"unknown event type {event_type!r}") from None

    def by_subject(self, domain: str, event_name: str) -> type[Event] | None:
        return self._by_subject.get((domain, event_name))

    def upcast(self, cls: type[Event], version: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Bring `fields` stored at `version` up to `cls.__event_version__`."""
        if version > cls.__event_version__:
            raise DecodeError(
                f"{cls.__event_type__} version {version} is newer than this code knows "
                f"({cls.__event_version__})"
            )
        for v in range(version, cls.__event_version__):
            step = self._upcasters.get((cls.__event_type__, v))
            if step is None:
                raise DecodeError(f"no upcaster for {cls.__event_type__} from version {v}")
            fields = step(fields)
        return fields
