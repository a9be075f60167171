"""The projector: runs projections, one live loop each; checkpoints; rebuilds.

A projection runs as a generation (bus.generation) that queries read. Its live loop folds a
batch, tells in-process observers once the batch's keys are stored, and records the
checkpoint while the next batch is read (a checkpoint is sent only once its keys are stored,
one at a time). Once quiet, it moves its position over the events it does not read.

Taking a projection over fences it: `run` writes its checkpoint back, conditional on the
revision it read, then the generation's fence; every later checkpoint is conditional on the
revision this instance wrote last. So an instance that lost the projection meanwhile (paused
past its lease, say) has every write refused, and its loop stops with `Fenced`.

A rebuild fills a new generation from sequence 1 while queries read the current one; once
it has caught up, the live loop pauses for the last few events, one status write switches
generations, and the old bucket is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import nats.errors

from . import _headers as h
from ._client import Bus
from ._coverage import Coverage
from ._errors import BusError, ConcurrencyError, ConfigError, Fenced
from ._feed import SharedReads
from ._generation import IDLE_CHECK, Generation
from ._kv import ensure_bucket
from ._nats.wire import Outgoing
from ._projection import META_BUCKET, Projection, ProjectionStatus, Record
from ._reader import read_from_leader

log = logging.getLogger("bus.projector")
TAKEOVER_TRIES = 5  # reads of a checkpoint another instance keeps moving, before giving up

Progress = Callable[[ProjectionStatus], None]
# (generation, position, the records the batch wrote): told once a batch's keys are stored
Applied = Callable[[int, int, dict[str, Record]], None]
_encode_status = msgspec.json.Encoder().encode
_decode_status = msgspec.json.Decoder(ProjectionStatus).decode


class _Live:
    """A projection as the projector runs it: the generation queries read, and a rebuild."""

    def __init__(self, current: Generation, revision: int) -> None:
        self.current = current
        self.rebuild: Generation | None = None
        self.switch: asyncio.Future[ProjectionStatus] | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.saving: asyncio.Task[ProjectionStatus] | None = None  # the checkpoint in flight
        self.revision = revision  # of the checkpoint this instance wrote last
        self.writing = asyncio.Lock()  # checkpoints are conditional on that: one at a time


class Projector:
    """Runs projections on a Bus: `async with Projector(bus, [task, task_counts]): ...`

    `run(name)` and `halt(name)` start and stop one projection, for a service that runs
    only the projections whose lease it holds; `alive(name)` turns False when another
    instance has fenced it off.
    """

    def __init__(self, bus: Bus, projections: Iterable[Projection[Any]]) -> None:
        self._bus = bus
        self.projections = {p.name: p for p in projections}
        self._live: dict[str, _Live] = {}
        self._shared = SharedReads(bus)
        self._observers: dict[str, list[Applied]] = {}

    def observe(self, name: str, observer: Applied) -> None:
        """Tell `observer` of every batch of `name` applied to the generation queries read,
        once its keys are stored and before its checkpoint is: a view in this process (`bus
        up`'s edge) learns of it a round trip sooner than from the checkpoint."""
        self._observers.setdefault(name, []).append(observer)

    @property
    def running(self) -> list[str]:
        return sorted(self._live)

    def alive(self, name: str) -> bool:
        """Whether `name` runs here and has not been taken over by another instance."""
        live = self._live.get(name)
        return live is not None and live.task is not None and not live.task.done()

    async def start(self) -> None:
        for name in self.projections:
            await self.run(name)

    async def run(self, name: str) -> None:
        """Take `name` over and resume it from its checkpoint (idempotent)."""
        if name in self._live:
            return
        projection = self.projections[name]
        await ensure_bucket(self._bus.js, META_BUCKET, replicas=self._bus.replicas)
        stream = await self._bus.stream_for(projection.subjects[0])
        coverage = await Coverage.of(self._bus, stream, projection.subjects)
        status, revision = await self._take_over(projection, stream)
        current = Generation(
            self._bus, self._shared, projection, coverage, status.generation, status.fence
        )
        current.position = status.position
        current.applied, current.failures = status.applied, status.failures
        await current.open()
        live = self._live[name] = _Live(current, revision)
        for subject in projection.subjects:  # a wake-up on every new event, no polling
            await self._shared.listen(subject, live.wake)
        live.task = asyncio.create_task(self._run(live), name=f"projection {name}")

    async def _take_over(
        self, projection: Projection[Any], stream: str
    ) -> tuple[ProjectionStatus, int]:
        """The checkpoint as its leader holds it, written back conditional on its revision
        with that revision as this instance's fence: an instance that ran it before can
        write no checkpoint after this. Returns the status and the revision written."""
        subject = f"$KV.{META_BUCKET}.{projection.name}"
        for _ in range(TAKEOVER_TRIES):
            found = await read_from_leader(
                self._bus.nc, f"KV_{META_BUCKET}", last_by_subject=subject
            )
            revision = found.seq if found else 0
            if found and found.data:
                status = _decode_status(found.data)
            else:
                status = ProjectionStatus(name=projection.name)
            status = msgspec.structs.replace(status, stream=stream, fence=revision)
            try:
                return status, await self._write_status(status, revision)
            except ConcurrencyError:
                continue  # another instance moved it meanwhile: read it again
        raise Fenced(f"projection {projection.name!r}")

    async def halt(self, name: str) -> None:
        """Stop folding `name` (its checkpoint stays where the last batch left it)."""
        live = self._live.pop(name, None)
        if live is None:
            return
        if live.task is not None:
            live.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live.task
        live.current.close()
        await live.current.unfollow()
        if live.rebuild is not None:
            live.rebuild.close()
        with contextlib.suppress(Fenced):
            await self._saved(live)  # a clean stop records where the last batch left off
        for subject in live.current.projection.subjects:
            await self._shared.unlisten(subject, live.wake)

    async def stop(self) -> None:
        for name in list(self._live):
            await self.halt(name)

    async def __aenter__(self) -> Projector:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def status(self, name: str) -> ProjectionStatus:
        """This process's view of a running projection (no round trip)."""
        live = self._live_for(name)
        return self._status(live)

    async def rebuild(self, name: str, progress: Progress | None = None) -> ProjectionStatus:
        """Fill a new generation from sequence 1, then switch queries to it."""
        live = self._live_for(name)
        if live.rebuild is not None:
            raise ConfigError(f"projection {name!r} is already rebuilding")
        current = live.current
        fresh = Generation(
            self._bus,
            self._shared,
            current.projection,
            current.coverage,
            current.number + 1,
            current.fence,
        )
        with contextlib.suppress(nats.errors.Error):  # leftovers of an interrupted rebuild
            await self._bus.js.delete_key_value(fresh.bucket)
        await fresh.open()
        live.rebuild = fresh
        step = self._bus.telemetry.step
        with step(f"rebuild {name}", **{"bus.projection.generation": fresh.number}):
            return await self._fill(live, fresh, progress)

    async def _fill(
        self, live: _Live, fresh: Generation, progress: Progress | None
    ) -> ProjectionStatus:
        try:
            while await fresh.step():
                await self._checkpoint(live)
                if progress is not None:
                    progress(self._status(live))
                if fresh.position >= live.current.position:
                    break
            live.switch = asyncio.get_running_loop().create_future()
            live.wake.set()
            return await live.switch
        finally:
            live.rebuild = None
            live.switch = None

    def _live_for(self, name: str) -> _Live:
        try:
            return self._live[name]
        except KeyError:
            raise ConfigError(f"no projection named {name!r} runs here") from None

    async def _run(self, live: _Live) -> None:
        try:
            await self._loop(live)
        except Fenced as exc:
            if live.switch is not None and not live.switch.done():
                live.switch.set_exception(exc)
            log.error("%s: this instance stops running it", exc)

    async def _loop(self, live: _Live) -> None:
        batch_size = live.current.projection.batch_size
        while True:
            if live.switch is not None and not live.switch.done():
                await self._switch(live)
            live.wake.clear()
            try:
                before = live.current.position
                read = await live.current.step()
                if live.current.position != before:  # keys stored: tell the readers
                    current = live.current
                    for observer in self._observers.get(current.projection.name, ()):
                        observer(current.number, current.position, current.written)
                    await self._save(live)
            except Fenced:
                raise
            except BusError as exc:  # NATS away: try again shortly, nothing is lost
                log.warning("projection %s paused: %s", live.current.projection.name, exc)
                read = 0
            except Exception:  # a bug must not end the loop silently: log, retry later
                log.exception("projection %s: unexpected error", live.current.projection.name)
                read = 0
            if read < batch_size:
                with contextlib.suppress(BusError, nats.errors.Error):
                    await live.current.follow(live.wake)
                try:
                    async with asyncio.timeout(IDLE_CHECK):
                        await live.wake.wait()
                except TimeoutError:
                    await self._advance(live)

    async def _advance(self, live: _Live) -> None:
        """Quiet for a while: move over the events of the stream it does not read."""
        try:
            if await live.current.advance():
                await self._save(live)
        except Fenced:
            raise
        except BusError as exc:
            log.warning("projection %s: %s", live.current.projection.name, exc)

    async def _save(self, live: _Live) -> None:
        """Start writing the checkpoint, once the one in flight is written (in order)."""
        await self._saved(live)
        name = live.current.projection.name
        live.saving = asyncio.create_task(self._checkpoint(live), name=name)

    async def _switch(self, live: _Live) -> None:
        """The live loop is paused here: finish the rebuild, flip, drop the old bucket."""
        fresh, switch = live.rebuild, live.switch
        assert fresh is not None
        assert switch is not None
        try:
            await self._saved(live)
            while await fresh.step():
                pass
            # It has read to the stream's end: what the old one had seen, it has too.
            fresh.position = max(fresh.position, live.current.position)
            old, live.current = live.current, fresh
            await old.unfollow()
            live.rebuild = None
            status = await self._checkpoint(live)
            with contextlib.suppress(nats.errors.Error):
                await self._bus.js.delete_key_value(old.bucket)
            switch.set_result(status)
        except Fenced:
            raise
        except BusError as exc:
            switch.set_exception(exc)

    def _status(self, live: _Live) -> ProjectionStatus:
        current, fresh = live.current, live.rebuild
        return ProjectionStatus(
            name=current.projection.name,
            stream=current.stream,
            generation=current.number,
            position=current.position,
            applied=current.applied,
            failures=current.failures,
            last_error=current.last_error,
            rebuilding=fresh.number if fresh else 0,
            rebuild_position=fresh.position if fresh else 0,
            lag=current.lag,
            fence=current.fence,
            bucket_seq=current.bucket_seq,
        )

    async def _saved(self, live: _Live) -> None:
        """Wait for the checkpoint in flight: the next batch is read while it is written.

        One that failed is only logged: the next one covers it (keys carry their sequence,
        so a replay from an older checkpoint applies nothing twice). One refused because
        another instance took over ends the loop (`Fenced`)."""
        saving, live.saving = live.saving, None
        if saving is not None:
            try:
                await saving
            except Fenced:
                raise
            except BusError as exc:
                log.warning("projection %s: checkpoint not written: %s", saving.get_name(), exc)

    async def _checkpoint(self, live: _Live) -> ProjectionStatus:
        async with live.writing:
            status = self._status(live)
            try:
                live.revision = await self._write_status(status, live.revision)
            except ConcurrencyError:
                live.revision = await self._written_by_us(status)
            return status

    async def _written_by_us(self, status: ProjectionStatus) -> int:
        """After a refused checkpoint: its revision if the stored one is this very status
        (an attempt whose ack was lost, a server crash say, then sent again), else Fenced."""
        subject = f"$KV.{META_BUCKET}.{status.name}"
        found = await read_from_leader(self._bus.nc, f"KV_{META_BUCKET}", last_by_subject=subject)
        if found is None or found.data != _encode_status(status):
            raise Fenced(f"projection {status.name!r}")
        return found.seq

    async def _write_status(self, status: ProjectionStatus, revision: int) -> int:
        """Write `status` if its key is still at `revision` (0: absent); the new revision."""
        subject = f"$KV.{META_BUCKET}.{status.name}"
        guard = {h.EXPECTED_LAST_SUBJECT_SEQ: str(revision)}
        out = Outgoing(subject, _encode_status(status), guard, "")
        return (await self._bus.publisher.send(out)).seq
