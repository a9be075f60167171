"""`bus bench --scenario security`: what signing and encryption cost (bus._protection).

End to end, on one embedded server: `--messages` events published pipelined (one
`publish_many`), then consumed with a per-message ack, with protection off, signing on (the
consumer requires signatures), encryption on (AES-256-GCM), and both; modes alternate over
the runs and each is a ratio to off in the same run (beside it, this process's CPU time per
message, much steadier on a shared machine). Encryption's target is >= 0.8x.

An Ed25519 signature or verification costs tens of microseconds against ~10 us for a whole
consumed message, so signing's ratio is bounded by libsodium, not by bus. Its target is
bus's own share: `Protection.seal`/`open` timed per message beside libsodium's sign/verify of
the same bytes, alone, interleaved in blocks; the difference is what bus adds (<= 3 us).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nkeys
from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from rich.console import Console
from rich.table import Table

from bus import Bus, EmbeddedServer, Keyring, Protection, Signer, StreamSpec, new_key

from .summary import Verdict, at_least, at_most
from .workload import BenchEvent, bench_event, bus_consume, purge

STREAM = StreamSpec(name="SEALED", subjects=("bench.>",))
MODES = ("off", "sign", "encrypt", "both")
RATES = ("publish", "consume")  # msgs/s
CPU = ("publish cpu", "consume cpu")  # this process's CPU µs per message (steadier)
ENCRYPT_TARGET = 0.8
OVERHEAD_TARGET = 3.0  # µs per message bus adds to the library's sign or verify
BLOCK = 50  # messages per timed block of the per-message measures (each case in turn)


def protections() -> dict[str, tuple[Protection | None, Protection | None]]:
    """(publisher's, consumer's) protection per mode."""
    signer, _ = Signer.generate()
    keys = {"bench": Keyring.parse(new_key())}
    trusted = {"trusted": [signer.public_key], "require_signatures": ["bench"]}
    return {
        "off": (None, None),
        "sign": (Protection(signer=signer), Protection(**trusted)),  # type: ignore[arg-type]
        "encrypt": (Protection(keys=keys), Protection(keys=keys)),
        "both": (Protection(signer=signer, keys=keys), Protection(keys=keys, **trusted)),  # type: ignore[arg-type]
    }


async def run_security_bench(runs: int, messages: int, as_json: bool) -> list[Verdict]:
    console = Console(stderr=True)
    modes = protections()
    rates: dict[str, dict[str, list[float]]] = {m: {r: [] for r in RATES + CPU} for m in MODES}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedServer(store_dir=Path(tmp, "nats"), sync_interval="2m") as server,
    ):
        for run in range(runs):
            console.print(f"run {run + 1}/{runs}…")
            for mode in MODES if run % 2 == 0 else reversed(MODES):
                sealing, opening = modes[mode]
                figures = await _end_to_end(server.url, sealing, opening, messages, run)
                for name, figure in zip(RATES + CPU, figures, strict=True):
                    rates[mode][name].append(figure)
    per_message = _per_message(runs)
    return _report(rates, per_message, runs, messages, as_json)


async def _end_to_end(
    url: str, sealing: Protection | None, opening: Protection | None, n: int, run: int
) -> tuple[float, float, float, float]:
    """msgs/s publishing and consuming, then CPU µs per message of each."""
    async with Bus(url, streams=[STREAM], protection=sealing) as writer:
        await purge(writer, STREAM.name)
        start, cpu = time.perf_counter(), time.process_time()
        await writer.publish_many((bench_event(i), f"b{i}") for i in range(n))
        publish, publish_cpu = time.perf_counter() - start, time.process_time() - cpu
    async with Bus(url, protection=opening) as reader:
        reader.registry.register(BenchEvent)
        start, cpu = time.perf_counter(), time.process_time()
        durable = f"sealed-{run}-{id(opening)}"
        await bus_consume(durable, n, reader)()
        consume, consume_cpu = time.perf_counter() - start, time.process_time() - cpu
        # Each mode starts from the same server: no earlier mode's consumer left on the stream.
        await reader.streams.delete_consumer(STREAM.name, durable)
    return n / publish, n / consume, publish_cpu / n * 1e6, consume_cpu / n * 1e6


def _per_message(runs: int) -> dict[str, list[float]]:
    """µs per message: libsodium's sign and verify alone, and bus's seal (signing) and open
    (checking the signature) of an event of the same size, timed in interleaved blocks."""
    signer, seed = Signer.generate()
    public, secret = crypto_sign_seed_keypair(bytes(nkeys.decode_seed(seed.encode())[1]))
    signing = Protection(signer=signer)
    checking = Protection(trusted=[signer.public_key], require_signatures=["bench"])
    subject, payload = "bench.b1.created", b'{"title":"benchmark event number 1","n":1}'
    event_id = "0193f0e4-7c1a-7000-8000-000000000001"
    hdrs = {"Nats-Msg-Id": event_id, "Bus-Event-Type": "BenchEvent", "Bus-Event-Version": "1",
            "Content-Type": "application/json", "Bus-Occurred-At": "2026-12-07T10:00:00.000Z",
            "Bus-Correlation-Id": event_id}  # fmt: skip
    sealed_hdrs = dict(hdrs)
    sealed = signing.seal(subject, event_id, sealed_hdrs, payload)
    signed_fields = [subject, event_id, "BenchEvent", "1", "", "application/json",
                     "2026-12-07T10:00:00.000Z", event_id, "", ""]  # fmt: skip
    same_bytes = "\n".join(signed_fields).encode() + payload  # as many bytes as bus signs
    signed = crypto_sign(same_bytes, secret)
    cases: dict[str, Callable[[], object]] = {
        "library sign": lambda: crypto_sign(same_bytes, secret),
        "bus seal (sign)": lambda: signing.seal(subject, event_id, dict(hdrs), payload),
        "library verify": lambda: crypto_sign_open(signed, public),
        "bus open (verify)": lambda: checking.open(subject, sealed, sealed_hdrs),
    }
    timings: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs * 40):
        for name, call in cases.items():
            start = time.perf_counter_ns()
            for _ in range(BLOCK):
                call()
            timings[name].append((time.perf_counter_ns() - start) / BLOCK / 1000)
    return timings


def _spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _report(
    rates: dict[str, dict[str, list[float]]],
    per_message: dict[str, list[float]],
    runs: int,
    n: int,
    as_json: bool,
) -> list[Verdict]:
    ratios = {m: {r: [x / o for x, o in zip(rates[m][r], rates["off"][r], strict=True)]
                  for r in RATES} for m in MODES}  # fmt: skip
    sign_over = [
        b - a
        for a, b in zip(per_message["library sign"], per_message["bus seal (sign)"], strict=True)
    ]
    verify_over = [b - a for a, b in zip(per_message["library verify"], per_message["bus open (verify)"], strict=True)]  # fmt: skip
    verdicts = [
        *(at_least("security", f"{r} with encryption vs off", statistics.median(ratios["encrypt"][r]),
                   ENCRYPT_TARGET, "x") for r in RATES),
        at_most("security", "bus's share of a signature", statistics.median(sign_over), OVERHEAD_TARGET, "µs"),
        at_most("security", "bus's share of a verification", statistics.median(verify_over), OVERHEAD_TARGET, "µs"),
    ]  # fmt: skip
    if as_json:
        print(json.dumps({"rates": rates, "ratios": ratios, "per_message_us": per_message,
                          "sign_overhead_us": sign_over, "verify_overhead_us": verify_over}))  # fmt: skip
        return verdicts
    table = Table("mode", "publish msgs/s", "ratio", "CPU µs/msg", "consume msgs/s", "ratio",
                  "CPU µs/msg",
                  title=f"signing and encryption · median (min-max) of {runs} runs · {n} messages")  # fmt: skip
    for mode in MODES:
        table.add_row(
            mode,
            _spread(rates[mode]["publish"], 0),
            _spread(ratios[mode]["publish"]),
            _spread(rates[mode]["publish cpu"], 1),
            _spread(rates[mode]["consume"], 0),
            _spread(ratios[mode]["consume"]),
            _spread(rates[mode]["consume cpu"], 1),
        )
    Console().print(table)
    micro = Table("per message", "µs", title=f"per message, blocks of {BLOCK}")
    for name, values in per_message.items():
        micro.add_row(name, _spread(values))
    micro.add_row("bus's share of signing", _spread(sign_over))
    micro.add_row("bus's share of verifying", _spread(verify_over))
    Console().print(micro)
    return verdicts
