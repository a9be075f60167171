"""Runs as one process's deciders last saw them, so deciding reads only a history's tail.

A run's history only grows, so its state folded up to sequence `seq` stays true of that
prefix: the next decision reads the events after `seq` (most often none or one) instead of
the whole run, and decodes and folds only those. Right after recording something the
process knows the run exactly up to it: a worker given a task this process recorded decides
on its outcome without reading at all, and a refused append (something came since) sends it
back to reading the tail. Bounded; a finished run is dropped.

The process's deciders take turns on a run (`deciding`): a worker recording an outcome
while another handler of the process is still recording what follows (a parallel step's
record, a sibling's outcome) waits for it, then appends on the state it left, instead of
being refused by it and trying again. Between processes the conditional append still
decides who comes first.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from types import TracebackType

import msgspec

from ._envelope import now_rfc3339
from ._events import Event
from ._store import EventStore
from ._workflow_events import DOMAIN, RunView, apply, apply_run, load_run

SIZE = 10_000  # runs remembered per process (least recently decided dropped first)


class Known:
    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self._runs: OrderedDict[str, RunView] = OrderedDict()
        self._turns: dict[str, _Turn] = {}  # runs someone of this process decides in

    def deciding(self, run_id: str) -> _Turn:
        """`async with` it: this process's turn to record and decide in the run."""
        turn = self._turns.get(run_id)
        if turn is None:
            turn = self._turns[run_id] = _Turn(self._turns, run_id)
        turn.holders += 1
        return turn

    def remember(self, run: RunView) -> None:
        """Keep `run` unless a later state of it is kept."""
        if run.finished:
            self.forget(run.run_id)
            return
        kept = self._runs.get(run.run_id)
        if kept is None or kept.seq < run.seq:
            self._runs[run.run_id] = run
        self._runs.move_to_end(run.run_id)
        while len(self._runs) > self.size:
            self._runs.popitem(last=False)

    def recorded(self, run_id: str, run: RunView, event: Event, seq: int) -> RunView:
        """`run` with `event`, which this process just stored at `seq`, folded in; kept."""
        return self.stored(apply(run, event, now_rfc3339(), seq, run_id), seq)

    def stored(self, after: RunView, seq: int) -> RunView:
        """The run as a record this process just stored at `seq` left it (folded before it
        was stored: `after`), kept."""
        run = msgspec.structs.replace(after, seq=seq)
        self.remember(run)
        return run

    def forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def since(self, run_id: str, seq: int) -> RunView | None:
        """The run as kept, if it is known up to `seq` or later (a record this process made
        or saw: what it asks is answered by the kept state, or an append on it is refused)."""
        kept = self._runs.get(run_id)
        return kept if kept is not None and kept.seq >= seq else None

    async def read(self, store: EventStore, run_id: str, origin: int) -> RunView:
        """The run now: the tail after what is kept folded onto it, or all of it."""
        kept = self._runs.get(run_id)
        if kept is None:
            run = (await load_run(store, run_id, origin))[1]
        else:
            run = kept
            for envelope in (await store.load(DOMAIN, run_id, since=kept.seq)).events:
                run = apply_run(run, envelope)
        if run.run_id:
            self.remember(run)
        return run


class _Turn:
    """A run's turn: taken at once when free, else waited for in order (a future each, made
    only then); dropped from `turns` when nobody holds or waits for it."""

    __slots__ = ("held", "holders", "run_id", "turns", "waiting")

    def __init__(self, turns: dict[str, _Turn], run_id: str) -> None:
        self.turns, self.run_id = turns, run_id
        self.held = False
        self.holders = 0
        self.waiting: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        if not self.held:
            self.held = True
            return
        handed = asyncio.get_running_loop().create_future()
        self.waiting.append(handed)
        try:
            await handed  # the one before hands the turn over (`held` stays True)
        except BaseException:
            if handed.cancelled():
                self.waiting.remove(handed)
            else:  # handed over, and then cancelled: the next one's turn
                self._hand_over()
            self._leave()
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._hand_over()
        self._leave()

    def _hand_over(self) -> None:
        while self.waiting:
            handed = self.waiting.popleft()
            if not handed.done():
                handed.set_result(None)
                return
        self.held = False

    def _leave(self) -> None:
        self.holders -= 1
        if not self.holders:
            del self.turns[self.run_id]
