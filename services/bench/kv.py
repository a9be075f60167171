"""Shared state beside raw nats-py KV: compare-and-set updates on one embedded server.

- `update` with compare-and-set: each write names the revision the previous one returned
  (`bucket.update(key, value, revision=)` beside nats-py's `kv.update(key, value, last=)`),
  awaited one after another: the round trip is the cost, so the ratio says what `bus` adds
  to it (encoding the JSON value, a `Nats-Msg-Id`, the publisher's lane);
- read-modify-write: a fresh read then a compare-and-set (`bucket.modify`, beside nats-py's
  `kv.get` then `kv.update`), both without contention.

Each run measures both sides in alternating blocks (noise on a shared machine hits both
alike); figures are medians of `runs`, with min-max. Run alone: `python -m services.bench.kv`.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.js.errors
from nats.js.kv import KeyValue
from rich.console import Console
from rich.table import Table

from bus import Bucket, BucketSpec, Bus, EmbeddedServer
from services.runtime.lifecycle import run

from .summary import Verdict, at_least

OPS = 2000  # awaited updates per side and run
BLOCKS = 10  # alternating blocks a run is measured in
TARGET = 0.95  # bus / raw, compare-and-set updates
BUCKET, RAW_BUCKET = "bench_kv", "bench_kv_raw"
VALUE: dict[str, Any] = {"limit": 100, "owner": "bench", "tags": ["a", "b"]}


class Case(msgspec.Struct):
    name: str
    target: float | None
    raw: list[float] = []
    bus: list[float] = []

    def ratios(self) -> list[float]:
        """Each run's bus / raw (the two sides of a run shared its noise)."""
        return [b / r for b, r in zip(self.bus, self.raw, strict=True)]

    def ratio(self) -> float:
        return statistics.median(self.ratios())

    def summary(self) -> dict[str, object]:
        row: dict[str, object] = {"case": self.name, "ratio": self.ratio(), "target": self.target}
        row["ratio_min"], row["ratio_max"] = min(self.ratios()), max(self.ratios())
        for side in ("raw", "bus"):
            rates: list[float] = getattr(self, side)
            row[side] = {
                "median": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "runs": rates,
            }
        return row


Work = Callable[[int], Awaitable[None]]  # n operations


async def _pair(case: Case, ours: Work, raw: Work, ops: int, blocks: int = BLOCKS) -> None:
    """`ops` operations each side in `blocks` alternating blocks (which side goes first
    alternates too), so a noisy neighbour slows both alike; one rate per side."""
    spent = {"bus": 0.0, "raw": 0.0}
    gc.collect()
    for block in range(blocks):
        sides = [("bus", ours), ("raw", raw)]
        for side, work in sides if block % 2 else sides[::-1]:
            start = time.perf_counter()
            await work(ops // blocks)
            spent[side] += time.perf_counter() - start
    case.bus.append(ops / spent["bus"])
    case.raw.append(ops / spent["raw"])


def _updates(bucket: Bucket[Any], kv: KeyValue, key: str) -> tuple[Work, Work]:
    payload = msgspec.json.encode(VALUE)
    revisions = {"bus": 0, "raw": 0}

    async def ours(n: int) -> None:
        revision = revisions["bus"] or await bucket.put(key, VALUE)
        for _ in range(n):
            revision = await bucket.update(key, VALUE, revision=revision)
        revisions["bus"] = revision

    async def raw(n: int) -> None:
        revision = revisions["raw"] or await kv.put(key, payload)
        for _ in range(n):
            revision = await kv.update(key, payload, last=revision)
        revisions["raw"] = revision

    return ours, raw


def _read_modify_write(bucket: Bucket[Any], kv: KeyValue, key: str) -> tuple[Work, Work]:
    def bump(value: Any) -> Any:
        return {**(value or VALUE), "limit": (value or VALUE)["limit"] + 1}

    async def ours(n: int) -> None:
        for _ in range(n):
            await bucket.modify(key, bump)

    async def raw(n: int) -> None:
        for _ in range(n):
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                await kv.create(key, msgspec.json.encode(bump(None)))
                continue
            value = bump(msgspec.json.decode(entry.value or b"null"))
            await kv.update(key, msgspec.json.encode(value), last=entry.revision)

    return ours, raw


async def run_kv_bench(runs: int, as_json: bool) -> list[Verdict]:
    console = Console(stderr=True)
    cases = [Case("update, compare-and-set", TARGET), Case("read-modify-write", None)]
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(store_dir=Path(tmp), sync_interval="2m").start()
        try:
            nc = await nats.connect(server.url)
            async with Bus(server.url, buckets=[BucketSpec(BUCKET)]) as bus:
                kv = await nc.jetstream().create_key_value(bucket=RAW_BUCKET)
                bucket = bus.bucket(BUCKET)
                for n in range(runs):
                    console.print(f"run {n + 1}/{runs}…")
                    await _pair(cases[0], *_updates(bucket, kv, f"u{n}"), OPS)
                    await _pair(cases[1], *_read_modify_write(bucket, kv, f"m{n}"), OPS // 2)
            await nc.close()
        finally:
            server.stop()
    _report(cases, runs, as_json)
    return [
        at_least("kv", c.name, c.ratio(), c.target, "x")
        if c.target is not None
        else Verdict("kv", c.name, f"{c.ratio():.2f}x", "", None)
        for c in cases
    ]


def _report(cases: list[Case], runs: int, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"kv": [c.summary() for c in cases], "runs": runs, "ops": OPS}))
        return
    table = Table("case", "bus ops/s", "raw nats-py ops/s", "ratio", "target",
                  title=f"shared state (medians of {runs} runs, min-max)")  # fmt: skip
    for c in cases:
        table.add_row(
            c.name,
            f"{statistics.median(c.bus):,.0f} ({min(c.bus):,.0f}-{max(c.bus):,.0f})",
            f"{statistics.median(c.raw):,.0f} ({min(c.raw):,.0f}-{max(c.raw):,.0f})",
            f"{c.ratio():.2f}x ({min(c.ratios()):.2f}-{max(c.ratios()):.2f})",
            f">= {c.target:.2f}x" if c.target else "",
        )
    Console().print(table)


if __name__ == "__main__":
    from .summary import show

    show(run(run_kv_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 5, False)), False)
