"""Streams as code: declarative definitions, idempotent `ensure`, and `verify` for streams
managed by operations (the application then declares nothing and only checks).

One stream per domain (`TASKS` captures `tasks.>`); each has a dead-letter twin
`DLQ_TASKS` capturing `dlq.TASKS.>`, where a dead letter keeps its original subject as suffix.
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerInfo,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

from ._errors import (
    ConfigError,
    NoStreamForSubject,
    StreamConflict,
    StreamError,
    StreamNotFound,
)
from ._subjects import validate_pattern

_STREAM_NAME = re.compile(r"[A-Za-z0-9_\-]{1,255}")
# What NATS itself refuses in a stream name: such a stream cannot exist, so looking it up is
# "not found" (and the name never reaches a subject like $JS.API.STREAM.INFO.<name>).
_IMPOSSIBLE_NAME = re.compile(r"[\s.*>/\\\x00-\x1f\x7f]")


def existing_name(name: str) -> str:
    """`name` if a stream could have it; else StreamNotFound without asking the server."""
    if not name or len(name) > 255 or _IMPOSSIBLE_NAME.search(name):
        raise StreamNotFound(name[:64])
    return name


DLQ_PREFIX = "DLQ_"
NOT_FOUND = 10059  # JetStream err_code: stream not found


def dead_letter_stream(stream: str) -> str:
    return f"{DLQ_PREFIX}{stream}"


def dead_letter_subject(stream: str, original_subject: str) -> str:
    return f"dlq.{stream}.{original_subject}"


@dataclass(frozen=True)
class StreamSpec:
    """What a stream must be. Durations are seconds; 0 or -1 mean unlimited."""

    name: str
    subjects: tuple[str, ...]
    replicas: int = 1
    storage: Literal["file", "memory"] = "file"
    max_age: float = 0
    max_bytes: int = -1
    max_msgs: int = -1
    max_msg_size: int = -1
    duplicate_window: float = 120.0
    allow_atomic: bool = True
    dead_letters: bool = True
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not _STREAM_NAME.fullmatch(self.name):
            raise ConfigError(f"stream name {self.name!r}: letters, digits, _ and - only")
        if isinstance(self.subjects, str):
            raise ConfigError(f"stream {self.name!r}: subjects must be a sequence, not a string")
        if not self.subjects:
            raise ConfigError(f"stream {self.name!r} needs at least one subject")
        for s in self.subjects:
            validate_pattern(s)
        if self.replicas not in (1, 3, 5):
            raise ConfigError(f"stream {self.name!r}: replicas must be 1, 3 or 5")
        if self.max_age and self.duplicate_window > self.max_age:
            raise ConfigError(
                f"stream {self.name!r}: duplicate_window ({self.duplicate_window:g}s) cannot "
                f"exceed max_age ({self.max_age:g}s)"
            )
        if self.storage not in ("file", "memory"):
            raise ConfigError(f"stream {self.name!r}: storage must be 'file' or 'memory'")

    @classmethod
    def for_domain(cls, domain: str, **options: Any) -> StreamSpec:
        """`tasks` → stream `TASKS` on `tasks.>`."""
        return cls(name=domain.upper(), subjects=(f"{domain}.>",), **options)

    def dead_letter_spec(self) -> StreamSpec:
        return StreamSpec(
            name=dead_letter_stream(self.name),
            subjects=(f"dlq.{self.name}.>",),
            replicas=self.replicas,
            storage=self.storage,
            dead_letters=False,
            allow_atomic=False,
            description=f"dead letters of {self.name}",
        )

    def to_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description=self.description or None,
            subjects=list(self.subjects),
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE if self.storage == "file" else StorageType.MEMORY,
            num_replicas=self.replicas,
            max_age=self.max_age or None,
            max_bytes=self.max_bytes,
            max_msgs=self.max_msgs,
            max_msg_size=self.max_msg_size,
            duplicate_window=self.duplicate_window,
            allow_direct=True,
            allow_atomic=self.allow_atomic or None,
            metadata=self.metadata or None,
        )


# Fields JetStream refuses to change on an existing stream.
_IMMUTABLE = ("storage", "retention")
# Fields we compare to decide whether an update is needed.
_COMPARED = (
    "subjects",
    "num_replicas",
    "max_age",
    "max_bytes",
    "max_msgs",
    "max_msg_size",
    "duplicate_window",
    "allow_atomic",
    "description",
)


class StreamSummary(msgspec.Struct, frozen=True):
    name: str
    subjects: list[str]
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    consumers: int
    replicas: int
    storage: str


class ConsumerSummary(msgspec.Struct, frozen=True):
    """A consumer of a stream: how far behind it is (`pending`: stored, not yet sent to it)
    and what it holds (`ack_pending`; `redelivered`: of those, sent more than once)."""

    stream: str
    name: str
    durable: bool
    pending: int
    ack_pending: int
    redelivered: int


class StreamManager:
    """Create, update, check and inspect streams; errors come out as StreamError."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._replicas: dict[str, int] = {}

    async def ensure(self, spec: StreamSpec) -> StreamSummary:
        """Create the stream, or update it when it differs in a field that can change."""
        wanted = spec.to_config()
        try:
            existing = (await self._js.stream_info(spec.name)).config
        except nats.js.errors.NotFoundError:
            info = await self._call(self._js.add_stream(wanted), spec.name)
        else:
            for name in _IMMUTABLE:
                if getattr(existing, name) != getattr(wanted, name):
                    raise StreamConflict(
                        spec.name,
                        name,
                        _plain(getattr(existing, name)),
                        _plain(getattr(wanted, name)),
                    )
            if any(_differs(existing, wanted, name) for name in _COMPARED):
                info = await self._call(self._js.update_stream(wanted), spec.name)
            else:
                info = await self._call(self._js.stream_info(spec.name), spec.name)
        if spec.dead_letters:
            await self.ensure(spec.dead_letter_spec())
        return _summary(info)

    async def verify(self, spec: StreamSpec) -> StreamSummary:
        """Check, without changing anything, that the stream exists and captures our subjects."""
        summary = await self.info(spec.name)
        missing = set(spec.subjects) - set(summary.subjects)
        if missing:
            raise StreamConflict(spec.name, "subjects", summary.subjects, sorted(spec.subjects))
        if spec.dead_letters:
            await self.verify(spec.dead_letter_spec())
        return summary

    async def info(self, name: str) -> StreamSummary:
        return _summary(await self._call(self._js.stream_info(existing_name(name)), name))

    async def list(self) -> list[StreamSummary]:
        infos = await self._call(self._js.streams_info(), "*")
        return sorted((_summary(i) for i in infos), key=lambda s: s.name)

    async def capturing(self, subject: str) -> str:
        """The name of the stream that captures `subject` (NoStreamForSubject if none)."""
        try:
            return str(await self._js.find_stream_name_by_subject(subject))
        except nats.js.errors.NotFoundError:
            raise NoStreamForSubject(subject) from None
        except nats.errors.Error as exc:
            raise StreamError(f"looking up the stream of {subject!r}: {exc}") from None

    async def replicated(self, name: str) -> bool:
        """Whether stream `name` has several replicas: then a direct get may be answered by
        a follower that trails the leader (looked up once per stream)."""
        if name not in self._replicas:
            self._replicas[name] = (await self.info(name)).replicas
        return self._replicas[name] > 1

    async def consumers(self, name: str) -> builtins.list[ConsumerSummary]:
        infos = await self._call(self._js.consumers_info(existing_name(name)), name)
        return [_consumer_summary(name, info) for info in infos]

    async def consumer(self, stream: str, name: str) -> ConsumerSummary:
        """One consumer of `stream` (StreamNotFound if the stream or the consumer is gone)."""
        info = await self._call(self._js.consumer_info(existing_name(stream), name), stream)
        return _consumer_summary(stream, info)

    async def delete_consumer(self, stream: str, name: str) -> None:
        """Remove a consumer of `stream` (StreamNotFound if the stream or the consumer is
        gone)."""
        await self._call(self._js.delete_consumer(existing_name(stream), name), stream)

    async def purge(self, name: str) -> None:
        """Remove every message of the stream (its sequence numbers go on from where they
        were)."""
        await self._call(self._js.purge_stream(existing_name(name)), name)

    async def delete(self, name: str) -> None:
        await self._call(self._js.delete_stream(existing_name(name)), name)

    async def _call(self, awaitable: Any, stream: str) -> Any:
        try:
            return await awaitable
        except nats.js.errors.NotFoundError:
            raise StreamNotFound(stream) from None
        except nats.js.errors.APIError as exc:
            if exc.err_code == NOT_FOUND:
                raise StreamNotFound(stream) from None
            raise StreamError(f"stream {stream!r}: {exc.description}") from None
        except nats.errors.TimeoutError:
            raise StreamError(f"stream {stream!r}: JetStream did not answer in time") from None
        except nats.errors.Error as exc:
            raise StreamError(f"stream {stream!r}: {exc}") from None


def _differs(existing: StreamConfig, wanted: StreamConfig, name: str) -> bool:
    have, want = getattr(existing, name), getattr(wanted, name)
    if name in ("max_age", "duplicate_window"):
        return bool(abs((have or 0) - (want or 0)) > 1e-6)
    if name == "allow_atomic":
        return bool(have) != bool(want)
    if name == "description":
        return bool((have or None) != (want or None))
    return bool(have != want)


def _consumer_summary(stream: str, info: ConsumerInfo) -> ConsumerSummary:
    return ConsumerSummary(
        stream,
        info.name,
        bool(info.config.durable_name),
        info.num_pending or 0,
        info.num_ack_pending or 0,
        info.num_redelivered or 0,
    )


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def _summary(info: StreamInfo) -> StreamSummary:
    cfg, state = info.config, info.state
    return StreamSummary(
        name=cfg.name or "",
        subjects=list(cfg.subjects or []),
        messages=state.messages,
        bytes=state.bytes,
        first_seq=state.first_seq,
        last_seq=state.last_seq,
        consumers=state.consumer_count,
        replicas=cfg.num_replicas or 1,
        storage=_plain(cfg.storage) or "file",
    )
