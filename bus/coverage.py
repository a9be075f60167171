"""What a projection reads of its stream, and so where it stands in stream terms.

A projection's position is the stream sequence up to which it has seen its stream, the
events it does not read included: `after_seq=N` of any event of that stream then has an
answer. A projection reading only some subjects never folds the others, so "has it reached
N?" becomes "is any event it reads in (position, N] still unapplied?", which one read by
subject answers without touching the events it skips.

Such a read must not be stale: an event acknowledged a moment ago may not be on a follower
yet, and a stale "nothing there" would declare it applied. A single replica is always fresh;
on a replicated stream the stream leader answers (`read_from_leader`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .client import Bus
from .errors import BeyondStreamEnd
from .reader import read_from_leader, read_messages
from .subjects import covers


@dataclass(frozen=True)
class Coverage:
    """A projection's stream, the subjects it reads there, and whether that is all of it."""

    stream: str
    subjects: tuple[str, ...]
    reads_all: bool
    replicated: bool

    @classmethod
    async def of(cls, bus: Bus, stream: str, subjects: tuple[str, ...]) -> Coverage:
        info = await bus.streams.info(stream)
        reads_all = all(any(covers(mine, theirs) for mine in subjects) for theirs in info.subjects)
        return cls(stream, subjects, reads_all, info.replicas > 1)

    async def first_after(self, bus: Bus, position: int) -> int | None:
        """The sequence of the first event after `position` the projection reads, as the
        stream holds it now (None: there is none)."""
        found = await asyncio.gather(*(self._next(bus, position, s) for s in self.subjects))
        return min((seq for seq in found if seq is not None), default=None)

    async def unapplied(self, bus: Bus, position: int, seq: int) -> int | None:
        """The first event it reads in (position, seq], which it must apply before it has
        seen `seq`; None once it has. No read when it reads every subject of the stream
        (then `seq` itself; see `check_stored` for one not stored)."""
        if seq <= position:
            return None
        if self.reads_all:
            return seq
        await self.check_stored(bus, seq)  # first: what it reads next comes after it
        first = await self.first_after(bus, position)
        return first if first is not None and first <= seq else None

    async def check_stored(self, bus: Bus, seq: int) -> None:
        """BeyondStreamEnd unless the stream holds sequence `seq` (or held it)."""
        last = await last_sequence(bus, self.stream)
        if seq > last:
            raise BeyondStreamEnd(self.stream, seq, last)

    async def _next(self, bus: Bus, position: int, subject: str) -> int | None:
        if self.replicated:
            found = await read_from_leader(
                bus.nc, self.stream, seq=position + 1, next_by_subject=subject
            )
            return found.seq if found else None
        page = await read_messages(bus.nc, self.stream, position + 1, 1, subject)
        return page[0].seq if page else None


async def last_sequence(bus: Bus, stream: str) -> int:
    """The stream's last sequence, as its leader has it."""
    return (await bus.streams.info(stream)).last_seq
