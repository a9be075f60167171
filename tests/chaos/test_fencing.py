"""Fencing: a projector paused past its lease (SIGSTOP: a GC pause, a stalled VM, a slow
disk) cannot write what it was folding once it continues.

Two `bus projector` processes on an app whose fold takes 2 ms an event, 4,000 events over
20 keys (the standby folds the ~2,500 after the pause: 5 s). The lease holder is stopped in the middle of a batch; the standby takes the lease
over and folds everything; the old holder is continued and tries to write its batch. Every
write stored to the projection's bucket and checkpoint is watched as JetStream stores it: no
key's sequence ever goes back, the checkpoint never moves back, and the projection ends equal
to a full fold of the stream. (Before fencing, with 8,000 events, all 20 keys went back
~6,000 events and stayed there.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bus import Bus, ProjectionStatus, ProjectionView
from bus._kv import ensure_bucket
from bus._lease import BUCKET as LEASES
from bus._projection import META_BUCKET, Record
from tests.chaos.fence_app import Bumped, Tally, app
from tests.domain import eventually
from tests.processes import BUS, running
from tests.shapes import stored

EVENTS, KEYS = 4000, 20
BUCKET = app.projection("bumps").bucket(1)


class Stored:
    """Every record and checkpoint as JetStream stores them (ordered push consumers see only
    what was stored), and every record sent (a plain subscription sees refused ones too)."""

    def __init__(self) -> None:
        self.keys: dict[str, list[int]] = defaultdict(list)
        self.records: set[tuple[str, int, int]] = set()  # (key, seq, fence) stored
        self.sent: set[tuple[str, int, int]] = set()
        self.positions: list[int] = []
        self.subs: list[Any] = []

    def refused(self) -> set[tuple[str, int, int]]:
        return self.sent - self.records

    async def watch(self, bus: Bus) -> None:
        await ensure_bucket(bus.js, BUCKET)
        await ensure_bucket(bus.js, META_BUCKET)
        cut = len(f"$KV.{BUCKET}.")

        def read(msg: Any) -> tuple[str, int, int] | None:
            if not msg.data or msg.subject.endswith(".fence"):
                return None
            record = msgspec.msgpack.decode(msg.data, type=Record)
            return msg.subject[cut:], record.seq, record.fence

        async def on_key(msg: Any) -> None:
            if (found := read(msg)) is not None:
                self.keys[found[0]].append(found[1])
                self.records.add(found)

        async def on_sent(msg: Any) -> None:
            if (found := read(msg)) is not None:
                self.sent.add(found)

        async def on_status(msg: Any) -> None:
            if msg.data:
                status = msgspec.json.decode(msg.data, type=ProjectionStatus)
                self.positions.append(status.position)

        self.subs = [
            await bus.nc.subscribe(f"$KV.{BUCKET}.>", cb=on_sent),
            await bus.js.subscribe(f"$KV.{BUCKET}.>", cb=on_key, ordered_consumer=True),
            await bus.js.subscribe(f"$KV.{META_BUCKET}.bumps", cb=on_status, ordered_consumer=True),
        ]


def holder_pid(value: bytes) -> int:
    return int(value.decode().rsplit("-", 1)[1])


@pytest.mark.slow
async def test_a_projector_paused_past_its_lease_writes_nothing(
    nats_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "BUS_NATS_URL": nats_url}
    command = [BUS, "projector", "--app", "tests.chaos.fence_app:app"]
    async with Bus(nats_url, registry=app.registry, streams=app.streams) as bus:
        seen = Stored()
        await seen.watch(bus)
        results = await bus.publish_many(  # (each ack waits for an fsync: a busy disk is slow)
            ((Bumped(n=n), f"k{n % KEYS}") for n in range(EVENTS)), timeout=60
        )
        last = results[-1].seq
        view = ProjectionView(bus, app.projection("bumps"))
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(running(command, tmp_path / "first.log", env))
            await view.wait_for(1500, timeout=60)  # a few batches in
            second = stack.enter_context(running(command, tmp_path / "second.log", env))
            leases = await bus.js.key_value(LEASES)
            assert holder_pid((await leases.get("projection.bumps")).value or b"") == first.pid
            await asyncio.sleep(0.3)  # (in the middle of a batch: each folds for a second)
            first.send_signal(signal.SIGSTOP)
            try:
                await view.wait_for(last, timeout=120)  # the standby took over and finished
                holder = holder_pid((await leases.get("projection.bumps")).value or b"")
                assert holder == second.pid
            finally:
                first.send_signal(signal.SIGCONT)
            # It sends the batch it was folding, and JetStream refuses all of it.
            await eventually(lambda: seen.refused(), 30)
            assert first.poll() is None  # standing by again
        for key, seqs in seen.keys.items():
            assert seqs == sorted(seqs), f"{key} went back: {seqs}"
        assert seen.positions == sorted(seen.positions), seen.positions
        # The full fold, without 8 s of 2 ms folds: each key counts its events, and holds
        # the sequence of its last one.
        fold: dict[str, Tally] = {}
        for n, result in enumerate(results):
            key = f"k{n % KEYS}"
            fold[key] = Tally(fold.get(key, Tally()).count + 1, result.seq)
        assert await stored(bus, app.projection("bumps")) == fold


async def test_a_checkpoint_sent_again_after_a_lost_ack_is_not_taken_for_a_takeover(
    nats_url: str,
) -> None:
    """A server that dies after storing a checkpoint and before acknowledging it makes the
    projector send it again, and the conditional write is then refused although nobody else
    wrote: that is recognised (the stored one is this very status), while a checkpoint
    another instance wrote is not."""
    from bus import Fenced, Projector

    projection = app.projection("bumps")
    async with (
        Bus(nats_url, registry=app.registry, streams=app.streams) as bus,
        Projector(bus, [projection]) as projector,
    ):
        result = await bus.publish(Bumped(n=1), "k1")
        await ProjectionView(bus, projection).wait_for(result.seq, timeout=10)
        live = projector._live["bumps"]
        await projector._saved(live)  # (its last checkpoint may still be on its way)
        status = projector.status("bumps")
        await projector._write_status(status, live.revision)  # the first attempt, stored
        assert await projector._checkpoint(live) == status  # sent again: refused, recognised
        assert projector.alive("bumps")
        other = msgspec.structs.replace(status, fence=status.fence + 1)
        await projector._write_status(other, live.revision)  # another instance took over
        with pytest.raises(Fenced):
            await projector._checkpoint(live)
