"""`bus bench`'s memory probe: a consumer's peak RSS does not grow with the backlog.

A child process (a fresh interpreter, so its peak is its own) consumes a stored backlog with a
bus handler, handling either a few messages or all of them, and reports its peak RSS. A pull
consumer holds no more than its handler slots and read-ahead, so both peaks should be alike.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import msgspec

from bus import Bus, StreamSpec

from .workload import bench_event, bus_consume, purge


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MB (Linux: VmHWM).

    Not `getrusage().ru_maxrss`: Linux carries it across exec from the forked parent, so a
    child started by a 300 MB process reports 300 MB whatever it uses itself."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")


class Peaks(msgspec.Struct):
    backlog: int
    handled_few: int
    handled_all: int
    peak_rss_mb_few: float
    peak_rss_mb_all: float


async def probe(url: str, stream: StreamSpec, backlog: int) -> Peaks:
    """Store `backlog` events, then measure a child handling 1% of them and one handling all."""
    few = max(1, backlog // 100)
    async with Bus(url, streams=[stream]) as bus:
        await purge(bus, stream.name)
        for first in range(0, backlog, 10_000):
            chunk = range(first, min(first + 10_000, backlog))
            await bus.publish_many((bench_event(i), f"m{i}") for i in chunk)
        peaks = [await asyncio.to_thread(_child, url, n) for n in (few, backlog)]
        await purge(bus, stream.name)
    return Peaks(backlog, few, backlog, *peaks)


def _child(url: str, handle: int) -> float:
    out = subprocess.run(
        [sys.executable, "-m", __name__, url, str(handle)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out)


async def _consume(url: str, handle: int) -> None:
    """Handle `handle` of the stored events with a durable of its own (the server goes away
    with the bench, and the durable with it)."""
    async with Bus(url) as bus:
        await bus_consume(f"memory{handle}", handle, bus)()


if __name__ == "__main__":
    from services.runtime.lifecycle import run

    url, count = sys.argv[1:3]
    run(_consume(url, int(count)))
    print(peak_rss_mb())
