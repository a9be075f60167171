"""`Bus`: one connection to NATS, and everything an application does through it.

    async with Bus("nats://127.0.0.1:4222", streams=[StreamSpec.for_domain("tasks")]) as bus:
        await bus.publish(TaskCreated(title="write docs"), aggregate_id="7f3c")

Handlers registered with `@bus.subscribe(...)` before start run once the bus starts; `close()`
stops pulling, lets handlers in flight finish, drains the connection, all within a bound.
A closed Bus refuses reuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any, Self

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from opentelemetry.trace import NoOpTracerProvider, TracerProvider

from . import _calls as calls
from . import _deadletter as deadletter
from . import _reader as reader
from . import _rpc as rpc
from ._breaker import CircuitPolicy, Circuits
from ._buckets import BucketSpec
from ._codec import Codec, ContentType
from ._consumer import Consumer
from ._credentials import Credentials, describe, is_auth_failure, redact_url, split_urls
from ._envelope import Envelope, open_message
from ._errors import BusClosed, ConfigError, ConnectError
from ._events import Event, EventRegistry
from ._nats.acks import PublishResult
from ._nats.connection import Connection
from ._nats.direct import StoredMessage
from ._protection import Protection
from ._publish import Publisher, template_of
from ._shared_state import Bucket, Buckets
from ._streams import StreamManager, StreamSpec
from ._subjects import validate_pattern
from ._subscribe import Handler, Router, handler_spec
from ._tail import messages_on
from ._telemetry import Observer, Telemetry

log = logging.getLogger("bus")


_current_bus: ContextVar[Bus] = ContextVar("current_bus")


def current_bus() -> Bus:
    """The Bus running the current handler, so it can publish the events it causes."""
    try:
        return _current_bus.get()
    except LookupError:
        raise BusClosed("current_bus() is only available inside a handler") from None


class Bus:
    """A connected client: publish, subscribe, request/reply, streams and dead letters."""

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        credentials: Credentials | None = None,
        name: str = "bus",
        registry: EventRegistry | None = None,
        content_type: ContentType = "json",
        streams: Iterable[StreamSpec] = (),
        buckets: Iterable[BucketSpec] = (),
        manage_streams: bool = True,
        router: Router | None = None,
        publish_timeout: float = 5.0,
        drain_timeout: float = 10.0,
        connect_timeout: float = 2.0,
        replicas: int = 1,
        observer: Observer | None = None,
        tracer_provider: TracerProvider | None = None,
        circuits: Circuits | CircuitPolicy | None = None,
        protection: Protection | None = None,
    ) -> None:
        if replicas not in (1, 3, 5):
            raise ConfigError("replicas must be 1, 3 or 5")
        self.urls = split_urls(servers)
        self.replicas = replicas  # of the KV buckets this bus creates (read models, registry...)
        self._connect_opts = (credentials or Credentials()).connect_options()
        self.name = name
        self.registry = registry if registry is not None else EventRegistry()
        self.codec = Codec(content_type, protection)  # signing, encryption: bus._protection
        self.stream_specs = list(streams)
        self._buckets = Buckets(self, buckets)  # created at start, like the streams
        self.manage_streams = manage_streams
        self.router = router if router is not None else Router()
        self.publish_timeout = publish_timeout
        self.drain_timeout = drain_timeout
        self.connect_timeout = connect_timeout
        self.consumers: list[Consumer] = []
        self._nc: Connection | None = None
        self._js: JetStreamContext | None = None
        self._publisher: Publisher | None = None
        self._streams: StreamManager | None = None
        self._responders: list[rpc.Responder] = []
        self.circuits = Circuits.of(circuits, observer)  # per endpoint called; may be shared
        self._observer, self._tracer_provider = observer, tracer_provider
        # What it reports: its tracer is settled when it starts (tracing set up before that).
        self.telemetry = Telemetry(NoOpTracerProvider(), observer)
        self._state = "new"
        self._connect_error: Exception | None = None

    @classmethod
    async def connect(
        cls, servers: str | Sequence[str] = "nats://127.0.0.1:4222", **kw: Any
    ) -> Bus:
        return await cls(servers, **kw).start()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        if self._state != "new":
            raise BusClosed(f"this Bus is {self._state}; create a new one")
        self._state = "starting"
        self._nc = Connection()
        try:
            await self._nc.open(
                self.urls,
                name=self.name,
                connect_timeout=self.connect_timeout,
                drain_timeout=self.drain_timeout,
                on_error=self._on_error,
                on_reconnect=self._on_reconnect,
                **self._connect_opts,
            )
        except Exception as exc:  # nats-py raises several unrelated types here
            self._state = "closed"
            with contextlib.suppress(Exception):
                await self._nc.close()
            cause = self._connect_error or exc  # "no servers available" hides the reason
            raise ConnectError(
                f"cannot connect to {self.display_urls}: {describe(cause)}"
            ) from None
        self._js = self._nc.jetstream(timeout=self.publish_timeout)
        self.telemetry = Telemetry(self._tracer_provider, self._observer)
        self._publisher = Publisher(self._nc, self.codec, self.telemetry, self.publish_timeout)
        self._streams = StreamManager(self._js)
        self._state = "running"
        try:
            for spec in self.stream_specs:
                if self.manage_streams:
                    await self._streams.ensure(spec)
                else:
                    await self._streams.verify(spec)
            await self._buckets.ensure()
            for handler in self.router.specs:
                await self._start_consumer(handler)
            await self._start_responders(self.router.responders)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Stop consumers (in-flight handlers finish), stop services, drain, close."""
        if self._state in ("closing", "closed"):
            return
        self._state = "closing"  # handlers still in flight may publish while they finish
        await asyncio.gather(*(c.stop(self.drain_timeout) for c in self.consumers))
        self._state = "closed"
        await asyncio.gather(*(responder.stop() for responder in self._responders))
        if self._nc is not None and not self._nc.is_closed:
            try:
                async with asyncio.timeout(self.drain_timeout):
                    await self._nc.drain()
            except (TimeoutError, nats.errors.Error):
                await self._nc.close()

    @property
    def display_urls(self) -> str:
        """The server URLs, comma-separated, with any credentials in them hidden."""
        return ", ".join(redact_url(u) for u in self.urls)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def nc(self) -> Connection:
        """The underlying nats-py client, for what `bus` does not wrap."""
        if self._nc is None or self._state not in ("running", "closing"):
            raise BusClosed("the Bus is not running; use `async with Bus(...)` or `await start()`")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        self.nc  # noqa: B018 - raises when not running
        assert self._js is not None
        return self._js

    @property
    def streams(self) -> StreamManager:
        self.nc  # noqa: B018
        assert self._streams is not None
        return self._streams

    @property
    def publisher(self) -> Publisher:
        self.nc  # noqa: B018
        assert self._publisher is not None
        return self._publisher

    @property
    def server_version(self) -> str:
        """The version of the nats-server this Bus is connected to (`2.15.1`)."""
        v = self.nc.connected_server_version
        return f"{v.major}.{v.minor}.{v.patch}" + (f"-{v.dev}" if v.dev else "")

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def _on_error(self, exc: Exception) -> None:
        # While connecting, failures surface as the ConnectError start() raises.
        if self._state == "starting":
            if not is_auth_failure(self._connect_error):  # the telling error sticks
                self._connect_error = exc
            log.debug("nats: %s", describe(exc))
        else:
            log.warning("nats: %s", describe(exc))

    async def _on_reconnect(self) -> None:
        log.info("reconnected to %s", self._nc.connected_url if self._nc else "?")
        for consumer in self.consumers:
            consumer.reset_pulls()

    # -- publishing ---------------------------------------------------------------------------

    async def publish(
        self,
        event: Event,
        aggregate_id: str,
        *,
        event_id: str | None = None,
        expected_version: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        timeout: float | None = None,
    ) -> PublishResult:
        """Publish one event to `<domain>.<aggregate_id>.<event_name>` and await its ack."""
        out = self.publisher.prepare(
            event,
            aggregate_id,
            event_id=event_id,
            expected_version=expected_version,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        return await self.publisher.send(out, timeout)

    async def publish_many(
        self,
        items: Iterable[tuple[Event, str]],
        *,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Publish `(event, aggregate_id)` pairs pipelined; results in order.

        With `return_exceptions=True` a refused event gives its BusError in place of a result.
        While tracing, the batch is one `publish` span whose context every event carries.
        """
        pairs = list(items)
        if not pairs:
            return []
        batch = self.telemetry.publishing_batch(template_of(pairs[0][0]), len(pairs))
        with batch as trace:
            return await self.publisher.publish_many(pairs, trace, timeout, return_exceptions)

    # -- consuming ----------------------------------------------------------------------------

    def subscribe(
        self, subject: str | None = None, *, durable: str, **options: Any
    ) -> Callable[[Handler], Handler]:
        """Decorator: run the handler on a durable consumer once the Bus starts."""
        if self._state != "new":
            raise ConfigError("the Bus is already started: use `await bus.consume(...)` instead")
        return self.router.subscribe(subject, durable=durable, **options)

    async def consume(
        self, fn: Handler, subject: str | None = None, *, durable: str, **options: Any
    ) -> Consumer:
        """Start running `fn` now; returns the running Consumer (stopped by `close()`)."""
        return await self._start_consumer(handler_spec(fn, subject, durable=durable, **options))

    async def _start_consumer(self, spec: Any) -> Consumer:
        for cls in spec.event_types:
            self.registry.register(cls)
        stream = await self.stream_for(spec.subjects[0])
        consumer = Consumer(
            self.nc,
            self.js,
            self.registry,
            self.codec,
            self.publisher,
            spec,
            stream,
            self.telemetry,
            replicas=self.replicas,
        )
        token = _current_bus.set(self)  # copied into the consumer's tasks as they start
        try:
            await consumer.start()
        finally:
            _current_bus.reset(token)
        self.consumers.append(consumer)
        return consumer

    async def stream_for(self, subject: str) -> str:
        """The name of the stream that captures `subject` (StreamError if none does)."""
        return await self.streams.capturing(subject)

    # -- reading ------------------------------------------------------------------------------

    read = reader.read  # (stream, from_seq=1, limit=100, subject=None, *, since=None)

    def open(self, message: StoredMessage) -> Envelope[Event]:
        """Decode a stored message with this bus's registry; raises DecodeError."""
        return open_message(
            message.subject,
            message.data,
            message.headers,
            self.registry,
            self.codec,
            stream=message.stream,
            seq=message.seq,
        )

    async def tail(
        self, pattern: str, from_seq: int | None = None, *, stream: str | None = None
    ) -> AsyncGenerator[StoredMessage, None]:
        """Stored messages on `pattern` from `from_seq` (default: only new ones), then live.

        Reads pages by direct get at the reader's own pace, so a slow reader holds at most one
        page in memory and never misses a message; a core subscription on `pattern` wakes it
        when something new arrives. Survives reconnects. The stream is the one capturing
        `pattern` unless named (then `>` means all of it).
        """
        validate_pattern(pattern)
        if from_seq is not None and from_seq < 1:
            raise ConfigError("from_seq must be >= 1")
        stream = stream or await self.stream_for(pattern)
        info = await self.streams.info(stream)
        listen = info.subjects if pattern == ">" else [pattern]  # not every subject there is
        follow = messages_on(self.nc, stream, pattern, listen, from_seq or info.last_seq + 1)
        async with contextlib.aclosing(follow) as messages:
            async for message in messages:
                yield message

    def bucket(self, name: str) -> Bucket[Any]:
        """The handle on bucket `name`, one declared in `buckets=` (ConfigError if not)."""
        return self._buckets[name]

    # -- dead letters -------------------------------------------------------------------------

    async def dead_letters(
        self, stream: str, from_seq: int = 1, limit: int = 100
    ) -> list[deadletter.DeadLetter]:
        return await deadletter.list_dead_letters(self.nc, stream, from_seq, limit)

    async def replay(self, stream: str, seq: int) -> PublishResult:
        return await deadletter.replay(self.nc, self.publisher, stream, seq)

    discard = deadletter.discard  # (stream, seq): delete a dead letter, not replayed

    # -- request / reply ----------------------------------------------------------------------

    request = calls.request  # (subject, payload, response_type, timeout=5.0, *, endpoint=None)

    async def serve(
        self, subject: str, handler: Callable[[Any], Awaitable[Any]], **options: Any
    ) -> rpc.Responder:
        """Answer requests on `subject` until stopped; options: bus._rpc.responder_spec's."""
        return (await self._start_responders([rpc.responder_spec(handler, subject, **options)]))[0]

    async def _start_responders(self, specs: list[rpc.ResponderSpec]) -> list[rpc.Responder]:
        token = _current_bus.set(self)  # copied into the subscriptions' tasks
        try:
            started = await rpc.start_services(self.nc, self.telemetry, specs)
        finally:
            _current_bus.reset(token)
        self._responders = [r for r in self._responders if r.running] + started
        return started
