"""`bus bench --scenario tracing`: what tracing costs: off, and at 0%, 10% and 100% sampling.

Each mode runs in a fresh child process (a process has one tracer provider for good): it
publishes `--messages` events pipelined, then consumes them with a per-message ack, on the
same embedded server, and reports msgs/s. Publishing goes in `publish_many` calls of 100
events, each one trace (one batch span), so sampling decides per hundred. "off" installs no
SDK at all (the default without `OTEL_EXPORTER_OTLP_ENDPOINT`); the others install the SDK
with a parent-based ratio sampler (0%: what an installed SDK costs when nothing is sampled) and a batch processor whose exporter drops the spans, so
the figure is the cost of making spans, not of a network. Modes alternate over the runs;
medians are compared to off. The child's CPU time per message (all its threads) is reported
too: on a shared machine it moves much less than throughput does.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from bus import Bus, EmbeddedServer, Event, StreamSpec

from .summary import Verdict, at_least
from .workload import purge

MODES = {"off": None, "0%": 0.0, "10%": 0.1, "100%": 1.0}
TARGET = 0.85  # 10% sampling keeps at least this share of the throughput
CHUNK = 100  # events per publish_many call, each call one trace
RATES = ("publish", "consume")  # msgs/s
FIGURES = (*RATES, "publish cpu", "consume cpu")  # and CPU µs per message
STREAM = StreamSpec(name="TRACED", subjects=("traced.>",))


class Traced(Event, frozen=True):
    __domain__ = "traced"
    __event_name__ = "created"
    n: int


def run_tracing_bench(runs: int, messages: int, as_json: bool) -> list[Verdict]:
    console = Console(stderr=True)
    results: dict[str, dict[str, list[float]]] = {m: {k: [] for k in FIGURES} for m in MODES}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedServer(store_dir=Path(tmp, "nats"), sync_interval="2m") as server,
    ):
        for run in range(runs):
            console.print(f"run {run + 1}/{runs}…")
            order = list(MODES) if run % 2 == 0 else list(reversed(MODES))
            for mode in order:
                out = subprocess.run(
                    [sys.executable, "-m", __name__, server.url, mode, str(messages), str(run)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                for name, rate in json.loads(out).items():
                    results[mode][name].append(rate)
    return _report(results, runs, messages, as_json)


def _report(
    results: dict[str, dict[str, list[float]]], runs: int, n: int, as_json: bool
) -> list[Verdict]:
    medians = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in results.items()}
    ratios = {m: {k: r[k] / medians["off"][k] for k in RATES} for m, r in medians.items()}
    verdicts = [at_least("tracing", f"{k} at 10% sampling vs off", ratios["10%"][k], TARGET, "x")
                for k in RATES]  # fmt: skip
    if as_json:
        print(json.dumps({"runs": results, "median": medians, "ratio_to_off": ratios}))
        return verdicts
    table = Table("sampling", "publish msgs/s", "ratio", "CPU µs/msg", "consume msgs/s", "ratio",
                  "CPU µs/msg", title=f"tracing cost · median of {runs} runs · {n} messages")  # fmt: skip
    for mode, figures in medians.items():
        table.add_row(
            mode,
            *(
                cell
                for k in RATES
                for cell in (
                    f"{figures[k]:,.0f}",
                    f"{ratios[mode][k]:.2f}x",
                    f"{figures[f'{k} cpu']:.1f}",
                )
            ),
        )
    Console().print(table)
    worst = min(ratios["10%"].values())
    mark = "[green]ok[/]" if worst >= TARGET else "[red]missed[/]"
    Console().print(
        f"10% sampling keeps {worst:.0%} of the throughput (target >= {TARGET:.0%}) {mark}"
    )
    return verdicts


def _install_sdk(ratio: float) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    class Drop(SpanExporter):
        def export(self, spans: Sequence[object]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class EvenlySpread(RandomIdGenerator):
        """Trace ids whose low 64 bits, what the ratio sampler compares, step by the golden
        ratio: every run samples its share of the traces, where random ids would give
        10% +- 2% of the 200 traces of 20,000 messages (and as much noise in the figure)."""

        low = random.getrandbits(64)

        def generate_trace_id(self) -> int:
            self.low = (self.low + 0x9E3779B97F4A7C15) % 2**64
            return random.getrandbits(64) << 64 | self.low

    provider = TracerProvider(sampler=ParentBasedTraceIdRatio(ratio), id_generator=EvenlySpread())
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)


async def _child(url: str, mode: str, n: int, run: str) -> dict[str, float]:
    ratio = MODES[mode]
    if ratio is not None:
        _install_sdk(ratio)
    async with Bus(url, streams=[STREAM]) as bus:
        await purge(bus, STREAM.name)
        start, cpu = time.perf_counter(), time.process_time()
        for first in range(0, n, CHUNK):  # a trace per chunk: the sampler sees n / CHUNK roots
            await bus.publish_many((Traced(n=i), f"t{i}") for i in range(first, first + CHUNK))
        publish = n / (time.perf_counter() - start)
        publish_cpu = (time.process_time() - cpu) / n * 1e6
        done = asyncio.Event()
        seen = 0

        async def handle(event: Traced) -> None:
            nonlocal seen
            seen += 1
            if seen >= n:
                done.set()

        start, cpu = time.perf_counter(), time.process_time()
        consumer = await bus.consume(handle, durable=f"traced-{mode.rstrip('%')}-{run}")
        await done.wait()
        consume = n / (time.perf_counter() - start)
        consume_cpu = (time.process_time() - cpu) / n * 1e6
        await consumer.stop()
    figures = (publish, consume, publish_cpu, consume_cpu)
    return dict(zip(FIGURES, figures, strict=True))


if __name__ == "__main__":
    from services.runtime.lifecycle import run as run_loop

    url, mode, count, run_id = sys.argv[1:5]
    print(msgspec.json.encode(run_loop(_child(url, mode, int(count), run_id))).decode())
