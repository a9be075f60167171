"""The consumer runtime: one durable pull consumer running one handler.

A pull (bus.pulls) never asks for more messages than the consumer may hold: its handler
slots, plus as many as the handlers get through in `AHEAD_SECONDS` (at most `MAX_AHEAD`).
Fast handlers then never wait for a pull's round trip, slow ones hold little more than they
can start, and memory stays bounded. Pulls the server goes quiet on (restart, leader change)
are forgotten and asked again, so the consumer resumes by itself.
Handlers run in `concurrency` long-lived workers (bus.workers), not in a task per message.
A handler that raises has its attempt recorded (bus._attempts) before its message is nak'ed;
a redelivery reads it, so the ids its events get (bus._followups) start a new epoch after a
clean failure and repeat the crashed run's after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from . import _telemetry as telemetry
from ._attempts import UNREACHED, AttemptRecord
from ._codec import Codec
from ._delivery import Delivery
from ._envelope import Envelope, current_envelope, open_message
from ._errors import BusError, DecodeError, StreamError
from ._events import Event, EventRegistry
from ._followups import Handling, handled_message
from ._nats.connection import Connection
from ._nats.deliveries import sequence_and_delivered
from ._nats.pulls import Pulls
from ._nats.wire import parse_headers
from ._outcomes import Outcomes, settle
from ._publish import Publisher
from ._subscribe import HandlerSpec
from ._telemetry import Telemetry
from ._trace_context import leave_unsampled
from ._workers import Workers

log = logging.getLogger("bus.consumer")

ACK, IN_PROGRESS = b"+ACK", b"+WPI"
BATCH_LINGER = 0.02  # seconds a partial batch waits for more messages
AHEAD_SECONDS = 0.05  # hold, beyond the handler slots, what the handlers get through in this
MAX_AHEAD = 512  # messages


class Consumer:
    """Runs `spec.fn` over the durable consumer `spec.durable` on `stream`."""

    def __init__(
        self,
        nc: Connection,
        js: JetStreamContext,
        registry: EventRegistry,
        codec: Codec,
        publisher: Publisher,
        spec: HandlerSpec,
        stream: str,
        telemetry: Telemetry,
        *,
        expires: float = 5.0,
        heartbeat: float = 1.0,
        replicas: int = 1,
    ) -> None:
        self._nc, self._js, self._registry, self._codec = nc, js, registry, codec
        self._publisher = publisher
        self._telemetry = telemetry
        self.spec = spec
        self.stream = stream
        self._handling = Handling(stream, spec.durable)
        self._attempts = AttemptRecord(nc, js, stream, spec.durable, replicas)
        self._tick = min(heartbeat, spec.ack_wait / 4)  # the pull loop's longest sleep
        self._wake = asyncio.Event()
        self._pulls = Pulls(nc, stream, spec.durable, expires, heartbeat, self._wake.set)
        self._in_flight = 0
        self._capacity = spec.slots  # messages it may hold (see `_hold`)
        self._low_water = max(1, spec.slots // 4)  # pull again once this many are free
        self._held: dict[Delivery, float] = {}  # queued or in a handler, since (monotonic)
        self._idle = asyncio.Event()
        self._idle.set()
        self._batch: list[Delivery] = []
        self._workers: Workers[Delivery | list[Delivery]] = Workers(
            spec.concurrency, self._run, self._finished, spec.durable
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._sub: Any = None
        self._stopping = False
        self._stopped = False  # the workers are gone: what still arrives is handed back
        self._outcomes = Outcomes(
            nc, publisher, spec, stream, telemetry, self._attempts, self._handling
        )
        self.delivered = 0  # counters, for tests and metrics

    @property
    def dead_lettered(self) -> int:
        return self._outcomes.dead_lettered

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def capacity(self) -> int:
        """Messages it may hold now: its handler slots plus the read-ahead (see `_hold`)."""
        return self._capacity

    def consumer_config(self) -> ConsumerConfig:
        subjects = list(self.spec.subjects)
        return ConsumerConfig(
            durable_name=self.spec.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.spec.ack_wait,
            # One delivery past our limit, so a handler that crashed the process on its last
            # attempt still reaches us once more and goes to the dead-letter stream.
            max_deliver=self.spec.max_deliver + 1,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
            max_ack_pending=max(1000, self.spec.slots * 4),
        )

    async def ensure(self) -> None:
        try:
            await self._js.add_consumer(self.stream, self.consumer_config())
        except nats.js.errors.APIError as exc:
            raise StreamError(
                f"consumer {self.spec.durable!r} on {self.stream!r}: {exc.description}"
            ) from None
        except nats.errors.Error as exc:
            raise StreamError(f"consumer {self.spec.durable!r} on {self.stream!r}: {exc}") from None

    async def start(self) -> None:
        await self.ensure()
        self._pulls.inbox = self._nc.new_inbox()
        self._sub = await self._nc.open_lane(f"{self._pulls.inbox}.*", self._on_message)
        # Handlers run in copies of the starter's context (as tasks it created would), not
        # in the connection's reader task where the lane delivers.
        with self._handling.entered():
            self._workers.start()
        self._loop_task = asyncio.create_task(self._pull_loop(), name=f"pull {self.spec.durable}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop pulling; let handlers in flight finish (bounded), then unsubscribe.

        Messages delivered but not yet handled are left unacknowledged: JetStream redelivers
        them after `ack_wait`, to this process or another.
        """
        self._stopping = True
        self._flush_batch()  # a partial batch waiting for company is handled now, not after
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        self._stopped = True
        self._workers.stop()
        for task in self._tasks:
            task.cancel()
        if self._sub is not None:
            self._nc.close_lane(self._sub)
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()

    def reset_pulls(self) -> None:
        """Forget outstanding pulls (the server lost them) so the loop asks again."""
        self._pulls.clear()
        self._wake.set()

    # -- pulling ------------------------------------------------------------------------------

    def _free(self) -> int:
        return self._capacity - self._in_flight - len(self._batch) - self._pulls.requested

    def _hold(self) -> None:
        """How many messages to hold: the handler slots, and what the handlers get through in
        AHEAD_SECONDS by their measured pace (none until a job has been timed)."""
        per_job = self._workers.seconds_per_job
        jobs = self.spec.concurrency * AHEAD_SECONDS / per_job if per_job else 0
        self._capacity = self.spec.slots + min(MAX_AHEAD, int(jobs) * self.spec.batch_size)
        self._low_water = max(1, self._capacity // 4)

    async def _pull_loop(self) -> None:
        while not self._stopping:
            self._pulls.expire()
            self._keep_alive()
            self._hold()
            free = self._free()
            if free >= self._low_water or (free > 0 and not self._pulls):
                await self._pulls.ask(free)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tick):
                    await self._wake.wait()

    # -- receiving ----------------------------------------------------------------------------

    def _on_message(self, subject: bytes, reply: bytes, data: bytes, raw: bytes | None) -> None:
        """Called by the parser for every message and status on our inbox (see connection)."""
        status, headers = parse_headers(raw) if raw else (None, {})
        if status is not None:  # statuses come on the pull's own reply subject
            if self._pulls.status(subject, status) and status == "503":
                self._spawn_detached(self._recreate())  # no responders: the consumer is gone
            return
        msg = Delivery(subject.decode(), reply, data, headers)
        now = time.monotonic()
        # Messages keep their own subject (not the pull's): they fill the oldest pull.
        if not self._pulls.delivered(now) and (self._free() <= 0 or self._stopping):
            self._settle(msg, b"-NAK")  # from a forgotten pull, and no room
            return
        self.delivered += 1
        if not self.spec.batch:
            self._enqueue(msg, 1, now)
            return
        self._batch.append(msg)
        if len(self._batch) >= self.spec.batch_size:
            self._flush_batch()
        elif len(self._batch) == 1:  # a partial batch waits a moment for company, no longer
            asyncio.get_running_loop().call_later(BATCH_LINGER, self._flush_batch)

    def _flush_batch(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            self._enqueue(batch, len(batch), time.monotonic())

    async def _recreate(self) -> None:
        with contextlib.suppress(BusError):
            await self.ensure()

    def _enqueue(self, job: Delivery | list[Delivery], messages: int, now: float) -> None:
        """Queue a message (or a batch) for the workers; it holds `messages` slots until done."""
        if self._stopped:  # too late to handle here: JetStream delivers it again at once
            for msg in [job] if isinstance(job, Delivery) else job:
                self._settle(msg, b"-NAK")
            return
        self._in_flight += messages
        self._idle.clear()
        if isinstance(job, Delivery):
            self._held[job] = now
        else:
            for msg in job:
                self._held[msg] = now
        self._workers.put(job)

    def _run(self, job: Delivery | list[Delivery]) -> Coroutine[Any, Any, None]:
        if not isinstance(job, Delivery):
            return self._run_batch(job)
        return self._handle_one(job, None) if self._telemetry.tracer is None else self._run_one(job)

    def _finished(self, job: Delivery | list[Delivery]) -> None:
        if isinstance(job, Delivery):
            del self._held[job]
            self._release(1)
            return
        for msg in job:
            del self._held[msg]
        self._release(len(job))

    def _release(self, messages: int) -> None:
        self._in_flight -= messages
        if self._in_flight == 0:
            self._idle.set()
        if self._free() >= self._low_water:
            self._wake.set()

    # -- handling -----------------------------------------------------------------------------

    def _admit(self, msg: Delivery) -> Envelope[Event] | str:
        """The message's envelope, or why it goes to the dead-letter stream instead."""
        stream_seq, attempt = sequence_and_delivered(msg.reply)
        try:
            env = open_message(
                msg.subject,
                msg.data,
                msg.headers,
                self._registry,
                self._codec,
                stream=self.stream,
                seq=stream_seq,
                attempt=attempt,
            )
            if not self.spec.accepts(type(env.event)):
                raise DecodeError(f"{type(env.event).__name__} is not handled here", msg.subject)
        except DecodeError as exc:
            return exc.verdict
        if attempt > self.spec.max_deliver:
            return f"lost during attempt {self.spec.max_deliver} (crash?)"
        return env

    async def _run_one(self, msg: Delivery) -> None:
        token = self._telemetry.enter_unsampled(msg.headers)
        if token is not None:  # the cheap path for the traces the sampler left out
            try:
                await self._handle_one(msg, None)
            finally:
                leave_unsampled(token)
            return
        with self._telemetry.processing(
            self.spec.durable, self.stream, [msg.headers], msg.subject
        ) as span:
            await self._handle_one(msg, span)

    async def _handle_one(self, msg: Delivery, span: Any) -> None:
        observer = self._telemetry.observer
        started = time.perf_counter() if observer is not None else 0.0
        env = self._admit(msg)
        if isinstance(env, str):
            await self._outcomes.dead_letter(msg, env)
            return
        if env.attempt > 1 and not await self._outcomes.resume(msg, env):
            return
        # Each job runs in a fresh copy of the context (bus.workers): nothing to reset.
        current_envelope.set(env)
        handled_message.set(msg)
        outcome = "ok"
        try:
            if self.spec.wants_envelope:
                await self.spec.fn(env.event, env)
            else:
                await self.spec.fn(env.event)
        except Exception as exc:
            outcome = "error"
            telemetry.failed(span, exc)
            if env.attempt < self.spec.max_deliver and not isinstance(exc, UNREACHED):
                assert env.seq is not None  # (the message is kept alive while it is recorded)
                await self._attempts.failed(env.seq, env.attempt, within=self.spec.ack_wait / 2)
            await self._outcomes.failed(msg, env.attempt, exc)
        else:
            self._settle(msg, ACK)
        if observer is not None:
            observer.processed(self.spec.durable, outcome, time.perf_counter() - started, 1)

    async def _run_batch(self, msgs: list[Delivery]) -> None:
        if self._telemetry.tracer is None:
            await self._handle_batch(msgs, None)
            return
        headers = [m.headers for m in msgs]
        with self._telemetry.processing(self.spec.durable, self.stream, headers) as span:
            await self._handle_batch(msgs, span)

    async def _handle_batch(self, msgs: list[Delivery], span: Any) -> None:
        envs: list[tuple[Delivery, Envelope[Event]]] = []
        for msg in msgs:
            env = self._admit(msg)
            if isinstance(env, str):
                await self._outcomes.dead_letter(msg, env)
            else:
                envs.append((msg, env))
        if not envs:
            return
        started = time.monotonic()
        outcome = "ok"
        try:
            await self.spec.fn([env for _, env in envs])
        except Exception as exc:
            outcome = "error"
            telemetry.failed(span, exc)
            for msg, env in envs:
                await self._outcomes.failed(msg, env.attempt, exc)
        else:
            for msg, _ in envs:
                self._settle(msg, ACK)
        if (observer := self._telemetry.observer) is not None:
            seconds = time.monotonic() - started
            observer.processed(self.spec.durable, outcome, seconds, len(envs))

    def _settle(self, msg: Delivery, verb: bytes) -> None:
        settle(self._nc, msg, verb)

    def _keep_alive(self) -> None:
        """Tell JetStream that messages held for a while (queued, or in a handler running for
        a while) are still being worked on, so they are not delivered again elsewhere.

        One sweep per pull-loop turn (at least every heartbeat) instead of a timer per message.
        """
        now = time.monotonic()
        stale = now - self.spec.ack_wait / 4
        for msg, since in self._held.items():
            if since < stale:
                self._held[msg] = now
                self._settle(msg, IN_PROGRESS)

    def _spawn_detached(self, coro: Any) -> None:
        """Fire-and-forget work that holds no handler slot (settles, consumer re-creation)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
