"""The circuit breaker: its states driven by an injected clock, then around real requests to a
real responder that fails and recovers; its metrics and its place in the registry and in
`bus status`."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from rich.console import Console

from bus import (
    Bus,
    CircuitOpen,
    CircuitPolicy,
    Circuits,
    Component,
    ConfigError,
    NoResponders,
    Registration,
    RemoteError,
    RequestTimeout,
    ServiceError,
    components,
)
from observability.metrics import Metrics
from services.cli.status import collect, render
from services.demo import app as demo


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Ask(msgspec.Struct):
    n: int = 0


class Answer(msgspec.Struct):
    n: int


def test_opens_after_the_threshold_within_the_window_then_probes_and_closes() -> None:
    clock = Clock()
    circuits = Circuits(CircuitPolicy(failures=3, window=10, cool_down=5), clock=clock)
    for _ in range(2):
        circuits.admit("svc.get")
        circuits.failed("svc.get")
    clock.now += 11  # those two are out of the window now
    for _ in range(2):
        circuits.admit("svc.get")
        circuits.failed("svc.get")
    assert circuits.state("svc.get") == "closed"
    circuits.admit("svc.get")
    circuits.failed("svc.get")
    assert circuits.state("svc.get") == "open"
    with pytest.raises(CircuitOpen) as refused:
        circuits.admit("svc.get")
    assert refused.value.retry_after == 5
    assert refused.value.endpoint == "svc.get"
    clock.now += 3
    with pytest.raises(CircuitOpen) as refused:
        circuits.admit("svc.get")
    assert refused.value.retry_after == pytest.approx(2)
    assert circuits.admit("other.get") is None  # circuits are per endpoint

    clock.now += 2
    circuits.admit("svc.get")  # the probe
    assert circuits.state("svc.get") == "half_open"
    with pytest.raises(CircuitOpen):  # one probe at a time
        circuits.admit("svc.get")
    circuits.failed("svc.get")  # the probe failed: open again, for a full cool-down
    assert circuits.state("svc.get") == "open"
    clock.now += 4.9
    with pytest.raises(CircuitOpen):
        circuits.admit("svc.get")
    clock.now += 0.1
    circuits.succeeded(circuits.admit("svc.get"))
    assert circuits.state("svc.get") == "closed"
    circuits.admit("svc.get")
    circuits.failed("svc.get")  # a fresh count after closing
    assert circuits.state("svc.get") == "closed"


def test_a_cancelled_probe_gives_its_slot_back() -> None:
    clock = Clock()
    circuits = Circuits(CircuitPolicy(failures=1, cool_down=1), clock=clock)
    circuits.admit("a")
    circuits.failed("a")
    clock.now += 1
    circuits.abandoned(circuits.admit("a"))
    assert circuits.state("a") == "half_open"
    circuits.succeeded(circuits.admit("a"))
    assert circuits.state("a") == "closed"


def test_zero_failures_never_opens_and_bad_policies_are_refused() -> None:
    circuits = Circuits(CircuitPolicy(failures=0))
    for _ in range(100):
        circuits.admit("a")
        circuits.failed("a")
    assert circuits.state("a") == "closed"
    assert circuits.snapshot() == {}
    for bad in ({"failures": -1}, {"window": 0}, {"cool_down": -1}, {"probes": 0}):
        with pytest.raises(ConfigError):
            CircuitPolicy(**bad)


def test_the_table_forgets_closed_circuits_beyond_its_bound() -> None:
    circuits = Circuits(CircuitPolicy(failures=2))
    circuits.MAX = 3
    circuits.failed("kept-open")
    circuits.admit("kept-open")
    circuits.failed("kept-open")
    for n in range(10):
        circuits.failed(f"e{n}")
    snapshot = circuits.snapshot()
    assert len(snapshot) == 3
    assert snapshot["kept-open"] == "open"  # an open circuit is never the one forgotten
    assert list(snapshot) == ["kept-open", "e8", "e9"]
    circuits.failed("e0")  # a call admitted before e0 was forgotten fails late: tracked anew
    assert list(circuits.snapshot()) == ["kept-open", "e9", "e0"]


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_requests_trip_the_circuit_and_a_recovered_responder_closes_it(
    nats_url: str,
) -> None:
    clock = Clock()
    metrics = Metrics(CollectorRegistry())
    policy = CircuitPolicy(failures=3, window=30, cool_down=10)
    calls: list[int] = []
    broken = True

    async def answer(ask: Ask) -> Answer:
        calls.append(ask.n)
        if ask.n == 404:
            raise ServiceError(404, f"no such thing as {ask.n}")
        if broken:
            raise RuntimeError("down for now")
        return Answer(ask.n)

    circuits = Circuits(policy, clock=clock, observer=metrics)
    async with Bus(nats_url, observer=metrics, circuits=circuits) as bus:
        await bus.serve("svc.ask", answer, service="svc")
        for _ in range(5):  # the caller's fault: answered, never counted against it
            with pytest.raises(RemoteError) as refused:
                await bus.request("svc.ask", Ask(404), Answer)
            assert refused.value.code == 404
            assert refused.value.callers_fault
        assert bus.circuits.state("svc.ask") == "closed"
        for n in range(3):
            with pytest.raises(RemoteError) as failed:
                await bus.request("svc.ask", Ask(n), Answer)
            assert failed.value.code == 500
            assert not failed.value.callers_fault
        assert bus.circuits.state("svc.ask") == "open"
        before = len(calls)
        with pytest.raises(CircuitOpen) as refused_fast:
            await bus.request("svc.ask", Ask(7), Answer)
        assert refused_fast.value.retry_after == 10
        assert len(calls) == before  # failed at once: nothing was sent

        clock.now += 10  # the cool-down is over: one probe goes through, and fails
        with pytest.raises(RemoteError):
            await bus.request("svc.ask", Ask(8), Answer)
        assert len(calls) == before + 1
        assert bus.circuits.state("svc.ask") == "open"

        broken = False
        clock.now += 10
        assert await bus.request("svc.ask", Ask(9), Answer) == Answer(9)
        assert bus.circuits.state("svc.ask") == "closed"
        assert await bus.request("svc.ask", Ask(10), Answer) == Answer(10)

    count = "rpc_client_call_duration_seconds_count"
    assert _sample(metrics, count, rpc_method="svc.ask", outcome="refused") == 5
    assert _sample(metrics, count, rpc_method="svc.ask", outcome="error") == 4
    assert _sample(metrics, count, rpc_method="svc.ask", outcome="circuit_open") == 1
    assert _sample(metrics, count, rpc_method="svc.ask", outcome="ok") == 2
    served = "rpc_server_call_duration_seconds_count"
    assert _sample(metrics, served, rpc_service="svc", rpc_method="svc.ask", outcome="ok") == 2
    assert _sample(metrics, served, rpc_service="svc", rpc_method="svc.ask", outcome="error") == 4
    assert _sample(metrics, "bus_circuit_breaker_state", rpc_method="svc.ask") == 0


async def test_timeouts_and_missing_responders_count_and_endpoints_group_subjects(
    nats_url: str,
) -> None:
    release = asyncio.Event()

    async def slow(ask: Ask) -> Answer:
        await release.wait()
        return Answer(ask.n)

    policy = CircuitPolicy(failures=2, cool_down=60)
    async with Bus(nats_url, circuits=policy) as bus:
        with pytest.raises(NoResponders):
            await bus.request("nobody.1.get", Ask(), Answer, endpoint="nobody.*.get")
        with pytest.raises(NoResponders):
            await bus.request("nobody.2.get", Ask(), Answer, endpoint="nobody.*.get")
        with pytest.raises(CircuitOpen):  # another id, the same endpoint: the same circuit
            await bus.request("nobody.3.get", Ask(), Answer, endpoint="nobody.*.get")
        assert bus.circuits.snapshot() == {"nobody.*.get": "open"}

        await bus.serve("slow.get", slow, service="slow")
        for _ in range(2):
            with pytest.raises(RequestTimeout):
                await bus.request("slow.get", Ask(), Answer, timeout=0.05)
        assert bus.circuits.state("slow.get") == "open"
        release.set()


async def test_the_registry_entry_and_bus_status_show_the_circuits(nats_url: str) -> None:
    clock = Clock()
    circuits = Circuits(CircuitPolicy(failures=1, cool_down=30), clock=clock)
    async with (
        Bus(nats_url, circuits=circuits, registry=demo.registry, streams=demo.streams) as bus,
        Registration(bus, Component(name="caller"), ttl=0.6),
    ):
        with pytest.raises(NoResponders):
            await bus.request("absent.get", Ask(), Answer)
        found: list[Component] = []

        async def registered() -> bool:
            found[:] = [c for c in await components(bus, "caller") if c.circuits]
            return bool(found)

        await _until(registered)
        assert found[0].circuits == {"absent.get": "open"}
        status = await collect(bus, demo)
        console = Console(width=200, record=True)
        console.print(render(status))
        text = console.export_text()
        assert re.search(r"circuit +│ caller → absent.get +│ open", text), text


async def _until(check: Any, timeout: float = 10.0) -> None:
    """Poll `check` with a deadline (the registry is read, not subscribed to)."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_responders_declared_on_an_app_start_with_the_bus(nats_url: str) -> None:
    from bus import App

    app = App("calc")

    @app.serve("calc.double")
    async def double(ask: Ask) -> Answer:
        return Answer(ask.n * 2)

    @app.serve("calc.half", service="halves", version="2.0.0")
    async def half(ask: Ask) -> Answer:
        return Answer(ask.n // 2)

    with pytest.raises(ConfigError):
        app.serve("calc.double")(double)  # served twice
    with pytest.raises(ConfigError):
        app.serve("calc.bad", service="no spaces")(double)
    async with Bus(nats_url, router=app.router) as bus:
        assert await bus.request("calc.double", Ask(21), Answer) == Answer(42)
        assert await bus.request("calc.half", Ask(21), Answer) == Answer(10)
        micro = [c for c in await components(bus) if c.kind == "micro"]
        assert {(c.name, c.version, tuple(c.endpoints)) for c in micro} == {
            ("calc", "0.1.0", ("calc.double",)),
            ("halves", "2.0.0", ("calc.half",)),
        }


@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["call", "ok", "fail", "cancel"]), st.floats(0, 8)),
        max_size=80,
    ),
    failures=st.integers(1, 4),
    probes=st.integers(1, 3),
)
def test_whatever_happens_the_circuit_keeps_its_promises(
    steps: list[tuple[str, float]], failures: int, probes: int
) -> None:
    """Calls start and end in any order and at any time: an open circuit admits nothing
    before its cool-down, a half-open one no more than `probes` at once, and a closed one
    opens exactly on the `failures`-th failure within the window."""
    clock = Clock()
    policy = CircuitPolicy(failures=failures, window=10, cool_down=5, probes=probes)
    circuits = Circuits(policy, clock=clock)
    out: list[Any] = []  # circuits of calls admitted and not answered yet
    recent: list[float] = []  # failure times since the circuit last closed
    for action, wait in steps:
        clock.now += wait
        before = circuits.state("e")
        if action == "call":
            refused: CircuitOpen | None = None
            try:
                out.append(circuits.admit("e"))
            except CircuitOpen as exc:
                refused = exc
            if refused is not None:
                assert before != "closed"
                assert refused.retry_after > 0
            elif before == "open":
                assert circuits.state("e") == "half_open"  # only once the cool-down is over
        elif out:
            circuit = out.pop(0)
            if action == "ok":
                circuits.succeeded(circuit)
                if before == "half_open" and circuit is not None:  # (None: admitted before
                    assert circuits.state("e") == "closed"  # the endpoint ever failed)
            elif action == "cancel":
                circuits.abandoned(circuit)
            else:
                circuits.failed("e")
                if before == "closed":
                    recent[:] = [t for t in recent if t > clock.now - 10] + [clock.now]
                    assert (circuits.state("e") == "open") == (len(recent) >= failures)
                elif before == "half_open":
                    assert circuits.state("e") == "open"
        if circuits.state("e") == "closed" and before != "closed":
            recent.clear()
        for circuit in out:
            if circuit is not None:
                assert 0 <= circuit.probing <= probes
