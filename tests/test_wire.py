"""The wire format without a server: subjects, events, ids, codec, headers, schema."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bus
from bus import (
    BusError,
    Codec,
    ConfigError,
    DecodeError,
    Event,
    EventRegistry,
    InvalidSubject,
    event_subject,
    json_schema,
    matches,
    new_event_id,
    validate_pattern,
    validate_subject,
)
from bus._envelope import build_headers, open_message
from bus._nats.wire import encode_headers

from .domain import JobCreated, JobDone

token = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"),
    min_size=1,
    max_size=20,
)


@given(st.lists(token, min_size=1, max_size=8))
def test_subjects_of_valid_tokens_validate(tokens: list[str]) -> None:
    subject = ".".join(tokens)
    assert validate_subject(subject) == subject
    assert matches(subject, subject)
    assert matches(tokens[0] + ".>", subject) == (len(tokens) > 1)


@given(token, st.sampled_from([" ", ".", "*", ">", "\t", "\r\n", ""]), token)
def test_an_id_with_a_separator_or_wildcard_is_refused(left: str, bad: str, right: str) -> None:
    with pytest.raises(InvalidSubject):
        event_subject("jobs", f"{left}{bad}{right}" if bad else "", "created")


@pytest.mark.parametrize(
    "subject", ["", "a..b", ".a", "a.", "a b.c", "a.*.c", "a.>", "x" * 1025, "a.b\x00"]
)
def test_bad_publish_subjects(subject: str) -> None:
    with pytest.raises(InvalidSubject):
        validate_subject(subject)


def test_patterns() -> None:
    assert validate_pattern("a.*.c") == "a.*.c"
    assert validate_pattern("a.>") == "a.>"
    for bad in ("a.>.c", "a..b", "a b", ""):
        with pytest.raises(InvalidSubject):
            validate_pattern(bad)
    assert matches("a.*.c", "a.b.c")
    assert not matches("a.*.c", "a.b.d")
    assert not matches("a.*", "a.b.c")
    assert matches("a.>", "a.b.c")
    assert not matches("a.>", "a")


def test_event_ids_are_time_ordered_uuid7() -> None:
    ids = [new_event_id() for _ in range(1000)]
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert len(set(ids)) == 1000
    millis = [u.int >> 80 for u in parsed]
    assert millis == sorted(millis)


def test_event_class_rules() -> None:
    assert JobCreated.__event_type__ == "JobCreated"
    with pytest.raises(InvalidSubject):

        class Bad(Event):
            __domain__ = "has.dot"

    with pytest.raises(ConfigError):

        class Zero(Event):
            __event_version__ = 0


class JobCreatedV2(Event):
    """Version 2 of JobCreated: `title` became `name`, and `priority` arrived."""

    __domain__ = "jobs"
    __event_name__ = "created"
    __event_type__ = "JobCreated"
    __event_version__ = 3
    name: str
    priority: int


def test_registry_and_upcasting_chain() -> None:
    registry = EventRegistry([JobCreatedV2, JobDone])
    assert registry.register(JobDone) is JobDone  # idempotent
    assert registry.by_subject("jobs", "created") is JobCreatedV2
    with pytest.raises(DecodeError, match="unknown event type"):
        registry.by_type("Nope")

    @registry.upcaster("JobCreated", 1)
    def rename(fields: dict[str, Any]) -> dict[str, Any]:
        return {"name": fields.pop("title"), **fields}

    @registry.upcaster("JobCreated", 2)
    def prioritise(fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "priority": 1}

    codec = Codec()
    stored_v1 = b'{"title": "old"}'
    event = codec.decode_upcast(stored_v1, JobCreatedV2, 1, registry, "application/json")
    assert event == JobCreatedV2(name="old", priority=1)
    with pytest.raises(DecodeError, match="newer than this code"):
        codec.decode_upcast(stored_v1, JobCreatedV2, 4, registry, "application/json")


def test_registry_refuses_a_second_class_for_one_type() -> None:
    class Other(Event):
        __event_type__ = "JobDone"

    registry = EventRegistry([JobDone])
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(Other)


@pytest.mark.parametrize("content_type", ["json", "msgpack"])
def test_codec_round_trip(content_type: str) -> None:
    codec = Codec(content_type)  # type: ignore[arg-type]
    event = JobCreated(title="héllo ✓", fail_times=2)
    assert codec.decode(codec.encode(event), JobCreated, codec.mime) == event


def test_codec_refuses_unknown_content_type_names() -> None:
    with pytest.raises(ConfigError):
        Codec("xml")  # type: ignore[arg-type]


header_values = st.text(max_size=30)


@given(
    data=st.binary(max_size=200),
    headers=st.dictionaries(
        st.sampled_from(
            ["Bus-Event-Type", "Bus-Event-Version", "Content-Type", "Nats-Msg-Id", "X"]
        ),
        st.one_of(header_values, st.sampled_from(["JobCreated", "1", "application/msgpack"])),
    ),
    subject=st.sampled_from(["jobs.a.created", "jobs.a.done", "jobs.a", "other.a.created"]),
)
def test_any_bytes_and_headers_decode_or_raise_decode_error(
    data: bytes, headers: dict[str, str], subject: str
) -> None:
    registry = EventRegistry([JobCreated, JobDone])
    try:
        envelope = open_message(subject, data, headers, registry, Codec())
    except DecodeError:
        return
    assert isinstance(envelope.event, JobCreated | JobDone)


def test_headers_carry_metadata_and_refuse_line_breaks() -> None:
    hdrs = build_headers(JobDone(), "id-1", "application/json", "corr", "cause")
    assert hdrs["Nats-Msg-Id"] == "id-1"
    assert hdrs["Bus-Event-Type"] == "JobDone"
    assert hdrs["Bus-Event-Version"] == "1"
    assert hdrs["Bus-Correlation-Id"] == "corr"
    assert hdrs["Bus-Causation-Id"] == "cause"
    assert hdrs["Bus-Occurred-At"].endswith("Z")
    assert encode_headers({"A": "b"}) == b"NATS/1.0\r\nA: b\r\n\r\n"
    for hostile in ("x\r\nNats-Expected-Stream: EVIL", "x\ny", "x\rY"):
        with pytest.raises(ConfigError):
            encode_headers({"Bus-Correlation-Id": hostile})


def test_json_schema_names_every_event() -> None:
    schema = json_schema(EventRegistry([JobCreated, JobDone]))
    created = schema["$defs"]["JobCreated"]
    assert created["x-bus-subject"] == "jobs.{id}.created"
    assert created["x-bus-event-version"] == 1
    assert created["required"] == ["title"]
    assert set(schema["$defs"]) == {"JobCreated", "JobDone"}
    msgspec.json.encode(schema)  # serialisable as is


def test_errors_share_one_root() -> None:
    errors = [getattr(bus, n) for n in bus.__all__ if n.endswith(("Error", "Timeout"))]
    errors += [bus.InvalidSubject, bus.BusClosed, bus.StreamNotFound, bus.StreamConflict]
    errors += [bus.NoResponders, bus.NoStreamForSubject, bus.Fenced, bus.BeyondStreamEnd]
    assert all(issubclass(e, BusError) for e in errors)
    assert issubclass(bus.PublishTimeout, TimeoutError)
    assert issubclass(bus.DecodeError, ValueError)


def test_a_forked_child_draws_fresh_ids() -> None:
    import os

    new_event_id()  # the parent has a page of entropy in hand
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_event_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    assert child[14:] != new_event_id()[14:]  # same page reused would repeat the random part
