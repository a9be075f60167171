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

from dataclasses import dataclass

from ._client import Bus
from ._errors import BeyondStreamEnd
from ._nats.direct import StoredMessage
from ._reader import read_firsts, read_from_leader
from ._subjects import covers


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
        return _earliest(await self._firsts(bus, [(position + 1, s) for s in self.subjects]))

    async def unapplied(self, bus: Bus, position: int, seq: int) -> int | None:
        """The first event it reads in (position, seq], which it must apply before it has
        seen `seq`; None once it has. No read when it reads every subject of the stream
        (then `seq` itself; see `check_stored` for one not stored). Else one round trip:
        is `seq` stored, and then (asked after it) the first event of ours after `position`.
        """
        if seq <= position:
            return None
        if self.reads_all:
            return seq
        starts = [(seq, None), *((position + 1, s) for s in self.subjects)]
        stored, *mine = await self._firsts(bus, starts)
        if stored is None:
            raise BeyondStreamEnd(self.stream, seq, await last_sequence(bus, self.stream))
        first = _earliest(mine)
        return first if first is not None and first <= seq else None

    async def check_stored(self, bus: Bus, seq: int) -> None:
        """BeyondStreamEnd unless the stream has stored sequence `seq`."""
        if (await self._firsts(bus, [(seq, None)]))[0] is None:
            raise BeyondStreamEnd(self.stream, seq, await last_sequence(bus, self.stream))

    async def _firsts(
        self, bus: Bus, starts: list[tuple[int, str | None]]
    ) -> list[StoredMessage | None]:
        """The first message from each (sequence, subject filter), each read seeing at least
        what the one before it saw: direct gets sent together on a single replica, the
        leader asked in turn on a replicated stream."""
        if not self.replicated:
            return await read_firsts(bus.nc, self.stream, starts)
        return [
            await read_from_leader(bus.nc, self.stream, seq=seq, next_by_subject=subject)
            for seq, subject in starts
        ]


def _earliest(found: list[StoredMessage | None]) -> int | None:
    return min((m.seq for m in found if m is not None), default=None)


async def last_sequence(bus: Bus, stream: str) -> int:
    """The stream's last sequence, as its leader has it."""
    return (await bus.streams.info(stream)).last_seq
