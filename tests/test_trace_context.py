"""The bus reads and writes W3C trace context itself on the hot path; whatever a message
carries, it must come out exactly as OpenTelemetry's own propagator would have it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators import textmap
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bus import Bus, Envelope, EventStore, Telemetry, current_bus
from bus._trace_context import extract, inject, leave_unsampled, pass_on

from . import tracing_child
from .domain import JOBS, JobCreated, JobDone, eventually

TRACE, SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
CANONICAL = f"00-{TRACE}-{SPAN}-01"


def _same_as_propagator(headers: dict[str, str]) -> None:
    (ours, producer), reference = extract(headers), propagate.extract(headers)
    assert producer == trace.get_current_span(ours).get_span_context()
    assert producer == trace.get_current_span(reference).get_span_context()
    assert baggage.get_all(ours) == baggage.get_all(reference)


def test_a_canonical_traceparent_names_a_remote_parent() -> None:
    _, parent = extract({"traceparent": CANONICAL})
    assert (parent.trace_id, parent.span_id) == (int(TRACE, 16), int(SPAN, 16))
    assert parent.is_remote
    assert parent.trace_flags.sampled
    _same_as_propagator({"traceparent": CANONICAL})


@pytest.mark.parametrize(
    "traceparent",
    [
        "",
        CANONICAL[:-1],  # wrong length
        CANONICAL + "0",
        CANONICAL.upper(),
        f"00-{TRACE.upper()}-{SPAN}-01",
        f"00-{TRACE[:-1]}g-{SPAN}-01",  # not hex
        f"00-{TRACE}-{SPAN}-0x",
        f"00-{TRACE}-{SPAN}--1",
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero ids: no parent
        f"00-{TRACE}-{'0' * 16}-01",
        f"ff-{TRACE}-{SPAN}-01",  # the version W3C forbids
        f"01-{TRACE}-{SPAN}-01-future",  # a later version, with a field we do not know
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has no more fields
        f" {CANONICAL}",
        f"00_{TRACE}_{SPAN}_01",
        f"00-{TRACE}-{SPAN}-01"[:54] + "\n",
        "x" * 10_000,
    ],
)
def test_a_malformed_traceparent_is_read_as_the_propagator_reads_it(traceparent: str) -> None:
    _same_as_propagator({"traceparent": traceparent})


def _hex(digits: int) -> st.SearchStrategy[str]:
    return st.from_regex(rf"[0-9a-fA-F]{{{digits}}}", fullmatch=True)


# Near misses of the canonical form are where a hand-written parser goes wrong.
_TRACEPARENTS = st.text(max_size=60) | st.builds(
    "{}-{}-{}-{}{}".format,
    st.sampled_from(["00", "01", "ff", "0A"]),
    st.sampled_from(["0" * 32, TRACE]) | _hex(32),
    st.sampled_from(["0" * 16, SPAN]) | _hex(16),
    _hex(2),
    st.sampled_from(["", "-", "-x", " ", "\n"]),
)


@given(_TRACEPARENTS)
def test_any_traceparent_is_read_as_the_propagator_reads_it(traceparent: str) -> None:
    _same_as_propagator({"traceparent": traceparent})


PARENT_BASED = Telemetry(TracerProvider(sampler=ParentBased(ALWAYS_ON)))


def _skips_the_span(traceparent: str) -> bool:
    """Whether a consumer behind a parent-based sampler takes the unsampled fast path (no
    span, the traceparent passed on as it came)."""
    token = PARENT_BASED.enter_unsampled({"traceparent": traceparent})
    if token is None:
        return False
    leave_unsampled(token)
    return True


@pytest.mark.parametrize(("flags", "skipped"), [("00", True), ("02", True), ("01", False)])
def test_an_unsampled_parent_skips_the_span(flags: str, skipped: bool) -> None:
    assert _skips_the_span(f"00-{TRACE}-{SPAN}-{flags}") is skipped


@given(_TRACEPARENTS | st.builds(lambda tp: tp[:-1] + "0", _TRACEPARENTS))
def test_nothing_else_skips_the_span(traceparent: str) -> None:
    if _skips_the_span(traceparent):
        parent = trace.get_current_span(propagate.extract({"traceparent": traceparent}))
        assert parent.get_span_context().is_valid
        assert not parent.get_span_context().trace_flags.sampled


@pytest.mark.parametrize(
    "extra",
    [{"tracestate": "vendor=abc,other=1"}, {"baggage": "user=alice"}, {"tracestate": "=,bad"}],
)
def test_tracestate_and_baggage_are_carried(extra: dict[str, str]) -> None:
    _same_as_propagator({"traceparent": CANONICAL, **extra})


@pytest.mark.parametrize("headers", [{}, {"Nats-Msg-Id": "x"}, {"baggage": "user=alice"}])
def test_a_message_without_traceparent_has_no_parent(headers: dict[str, str]) -> None:
    _same_as_propagator(headers)
    assert not extract(headers)[1].is_valid


class _Marker(textmap.TextMapPropagator):
    """A propagator of another format: reads every message as one fixed parent."""

    parent = SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(1))

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        return trace.set_span_in_context(NonRecordingSpan(self.parent), context)

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        setter.set(carrier, "marker", "1")

    @property
    def fields(self) -> set[str]:
        return {"marker"}


@pytest.fixture
def other_propagators() -> Iterator[None]:
    saved = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), _Marker()]))
    yield
    propagate.set_global_textmap(saved)


@pytest.mark.usefixtures("other_propagators")
def test_other_configured_propagators_read_and_write_as_usual() -> None:
    _, read = extract({"traceparent": CANONICAL})
    assert read == _Marker.parent
    headers: dict[str, str] = {}
    inject(headers, NonRecordingSpan(SpanContext(3, 4, is_remote=False)))
    assert headers["marker"] == "1"


def _injected(span_context: SpanContext) -> tuple[dict[str, str], dict[str, str]]:
    span = NonRecordingSpan(span_context)
    ours: dict[str, str] = {}
    reference: dict[str, str] = {}
    inject(ours, span)
    propagate.inject(reference, context=trace.set_span_in_context(span))
    return ours, reference


@pytest.mark.parametrize("flags", [0, 1])
def test_injected_context_is_what_the_propagator_writes(flags: int) -> None:
    ours, reference = _injected(SpanContext(int(TRACE, 16), 7, False, TraceFlags(flags)))
    assert ours == reference == {"traceparent": f"00-{TRACE}-{7:016x}-{flags:02x}"}


def test_injected_tracestate_and_baggage_travel_too() -> None:
    state = TraceState([("vendor", "abc")])
    token = context.attach(baggage.set_baggage("user", "alice"))
    try:
        ours, reference = _injected(SpanContext(int(TRACE, 16), 7, False, TraceFlags(1), state))
    finally:
        context.detach(token)
    assert ours == reference
    assert {"tracestate", "baggage"} <= set(ours)


def test_spans_keep_their_structure_and_conventions(nats_url: str) -> None:
    """Across a failed and a retried attempt, a follow-up and a batch: who is whose parent,
    what links to what, and the messaging attributes samplers and dashboards read."""
    spans = tracing_child.run(nats_url, 1.0)["details"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    [publish] = by_name["publish jobs.{id}.created"]
    assert publish["kind"] == "PRODUCER"
    assert publish["parent"] is None
    assert publish["attributes"] == {
        "messaging.system": "nats",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": "jobs.{id}.created",
        "messaging.message.id": publish["attributes"]["messaging.message.id"],
        "messaging.message.body.size": publish["attributes"]["messaging.message.body.size"],
        "messaging.nats.stream": "JOBS",
        "messaging.nats.sequence": 1,
    }
    assert publish["attributes"]["messaging.message.body.size"] > 0

    failed, retried = by_name["process work"]  # in the order they ended
    for process in (failed, retried):
        assert process["kind"] == "CONSUMER"
        assert process["trace_id"] == publish["trace_id"]
        assert (process["parent"], process["remote_parent"]) == (publish["span_id"], True)
        assert process["links"] == [publish["span_id"]]
        assert {
            "messaging.system": "nats",
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": "work",
            "messaging.nats.stream": "JOBS",
            "messaging.destination.name": "jobs.c1.created",
        }.items() <= process["attributes"].items()
    assert (failed["status"], failed["attributes"]["error.type"]) == ("ERROR", "ValueError")
    assert (retried["status"], "error.type" in retried["attributes"]) == ("UNSET", False)

    [follow_up] = [
        s
        for s in by_name["publish jobs.{id}.done"]
        if "messaging.batch.message_count" not in s["attributes"]
    ]
    assert (follow_up["parent"], follow_up["kind"]) == (retried["span_id"], "PRODUCER")

    batches = by_name["process tally"]
    producers = {s["span_id"] for s in by_name["publish jobs.{id}.done"]}
    assert sum(b["attributes"]["messaging.batch.message_count"] for b in batches) == 4
    for batch in batches:
        assert batch["kind"] == "CONSUMER"
        assert len(batch["links"]) == batch["attributes"]["messaging.batch.message_count"]
        assert set(batch["links"]) <= producers
        assert batch["parent"] == batch["links"][0]  # a child of its first message's producer


# -- passing a caller's context on while tracing is off --------------------------------------

_W3C = TraceContextTextMapPropagator()
_TRACESTATES = st.none() | st.sampled_from(["vendor=abc,other=1", "=,bad", "a=1,a=2", ""])


@given(_TRACEPARENTS, _TRACESTATES)
def test_what_is_passed_on_is_what_the_propagator_would_write_again(
    traceparent: str, tracestate: str | None
) -> None:
    carrier = {"traceparent": traceparent}
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    reference: dict[str, str] = {}
    _W3C.inject(reference, context=_W3C.extract(carrier))
    assert pass_on(carrier) == (reference or None)


def test_nothing_is_passed_on_without_a_traceparent() -> None:
    assert pass_on({"tracestate": "vendor=abc"}) is None
    assert pass_on({}) is None


@pytest.fixture
async def jobs(nats_url: str) -> AsyncIterator[Bus]:
    async with Bus(nats_url, streams=[JOBS]) as bus:
        assert bus.telemetry.tracer is None  # (this process traces nothing)
        yield bus


async def _traceparents(bus: Bus, count: int) -> list[str | None]:
    messages = await bus.read("JOBS", 1, 100)
    assert len(messages) == count
    return [m.headers.get("traceparent") for m in messages]


async def test_every_way_of_publishing_passes_a_request_context_on(jobs: Bus) -> None:
    with jobs.telemetry.continuing({"traceparent": CANONICAL}):
        await jobs.publish(JobCreated(title="one"), "j1")
        await jobs.publish_many([(JobDone(), "j1"), (JobDone(), "j2")])
        await EventStore(jobs).append("jobs", "j3", [JobCreated(title="a"), JobDone()])
    await jobs.publish(JobCreated(title="after"), "j4")  # the request is over
    assert await _traceparents(jobs, 6) == [CANONICAL] * 5 + [None]


async def test_the_current_span_comes_before_the_request_and_the_message(jobs: Bus) -> None:
    """A context made current (the MCP SDK does with a message's `_meta`) is the nearest."""
    current = SpanContext(int(TRACE, 16), 7, False, TraceFlags(0))
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(current)))
    try:
        with jobs.telemetry.continuing({"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"}):
            await jobs.publish(JobCreated(title="one"), "j1")
    finally:
        context.detach(token)
    assert await _traceparents(jobs, 1) == [f"00-{TRACE}-{7:016x}-00"]


async def test_a_handler_passes_its_messages_context_on(jobs: Bus) -> None:
    followed: list[str] = []

    async def work(event: JobCreated, envelope: Envelope[JobCreated]) -> None:
        await current_bus().publish(JobDone(result=envelope.id), "j1")

    async def done(event: JobDone) -> None:
        followed.append(event.result)

    await jobs.consume(work, "jobs.*.created", durable="work")
    await jobs.consume(done, "jobs.*.done", durable="done")
    with jobs.telemetry.continuing({"traceparent": CANONICAL, "tracestate": "vendor=abc"}):
        await jobs.publish(JobCreated(title="one"), "j1")
    await eventually(lambda: followed)
    created, follow_up = await jobs.read("JOBS", 1, 100)
    for message in (created, follow_up):
        assert message.headers["traceparent"] == CANONICAL
        assert message.headers["tracestate"] == "vendor=abc"
