"""Signed events (bus._signing, bus._protection): a consumer or projection that requires
signatures handles only events a trusted signer signed as stored; the rest are dead-lettered
with a reason and never handled."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import (
    Bus,
    ConfigError,
    Envelope,
    EventStore,
    Keyring,
    ProjectionView,
    Projector,
    Protection,
    Rejected,
    Signer,
    StoredMessage,
    StreamSpec,
    acting_as,
    new_key,
)
from services.demo import TaskCreated, app

from .domain import JOBS, JobCreated, JobDone, eventually


async def eventually_async(check: Callable[[], Awaitable[object]]) -> None:
    deadline = asyncio.get_running_loop().time() + 15
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within 15 s"
        await asyncio.sleep(0.02)


WRITER, WRITER_SEED = Signer.generate()
STRANGER, _ = Signer.generate()
KEYRING = Keyring.parse(new_key())
REQUIRED = Protection(trusted=[WRITER.public_key], require_signatures=["jobs"])


@pytest.fixture
async def writer(nats_url: str) -> AsyncIterator[Bus]:
    async with Bus(nats_url, streams=[JOBS], protection=Protection(signer=WRITER)) as bus:
        yield bus


async def stored(bus: Bus, seq: int) -> StoredMessage:
    return (await bus.read("JOBS", seq, 1))[0]


async def put(bus: Bus, subject: str, data: bytes, headers: dict[str, str]) -> None:
    """Store a hand-made message, as an attacker with publish rights could."""
    await bus.js.publish(subject, data, headers=headers)


async def dead_letter_reasons(bus: Bus, stream: str, count: int) -> list[str]:
    """The reasons of the dead letters of `stream`, once there are `count` (15 s at most)."""
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        reasons = [letter.reason for letter in await bus.dead_letters(stream)]
        if len(reasons) >= count or asyncio.get_running_loop().time() > deadline:
            assert len(reasons) == count, reasons
            return reasons
        await asyncio.sleep(0.02)


async def test_signed_events_carry_signer_and_signature_and_are_handled(
    writer: Bus, nats_url: str
) -> None:
    seen: list[Envelope[JobCreated]] = []

    async def handle(event: JobCreated, envelope: Envelope[JobCreated]) -> None:
        seen.append(envelope)

    async with Bus(nats_url, protection=REQUIRED) as reader:
        await reader.consume(handle, durable="signed")
        result = await writer.publish(JobCreated(title="signed"), "j1")
        await eventually(lambda: seen)
        message = await stored(writer, result.seq)
    assert seen[0].event == JobCreated(title="signed")
    assert message.headers["Bus-Signer"] == WRITER.public_key
    assert len(base64.urlsafe_b64decode(message.headers["Bus-Signature"])) == 64
    assert seen[0].headers["Bus-Signer"] == WRITER.public_key


async def test_unsigned_forged_replayed_moved_and_untrusted_are_dead_lettered(
    writer: Bus, nats_url: str
) -> None:
    seen: list[str] = []

    async def handle(event: JobCreated) -> None:
        seen.append(event.title)

    good = await writer.publish(JobCreated(title="good"), "j1")
    original = await stored(writer, good.seq)
    hdrs = dict(original.headers)
    async with Bus(nats_url) as plain:
        await plain.publish(JobCreated(title="unsigned"), "j2")
    await put(writer, "jobs.j1.created", b'{"title":"evil"}', hdrs | {"Nats-Msg-Id": "forged-1"})
    fresh = {k: v for k, v in hdrs.items() if not k.startswith("Bus-Sig")}
    fresh["Nats-Msg-Id"] = "tampered-1"
    signed = Protection(signer=WRITER).seal(
        "jobs.j3.created", "tampered-1", fresh, b'{"title":"ok"}'
    )
    await put(writer, "jobs.j3.created", signed.replace(b"ok", b"no"), fresh)
    await put(writer, "jobs.j1.created", original.data, hdrs | {"Nats-Msg-Id": "replayed-1"})
    await put(writer, "jobs.j9.created", original.data, hdrs | {"Nats-Msg-Id": "moved-1"})
    async with Bus(nats_url, streams=[JOBS], protection=Protection(signer=STRANGER)) as other:
        await other.publish(JobCreated(title="stranger"), "j4")
    async with Bus(nats_url, protection=REQUIRED) as reader:
        await reader.consume(handle, durable="strict")
        reasons = await dead_letter_reasons(reader, "JOBS", 6)
        await eventually(lambda: seen)
    assert seen == ["good"]
    assert sum(r.startswith("rejected: unsigned: no Bus-Signature") for r in reasons) == 1
    assert sum(r.startswith("rejected: bad signature") for r in reasons) == 4
    assert sum(r.startswith(f"rejected: untrusted signer '{STRANGER.public_key}'") for r in reasons)
    assert all("replayed under another id" in r for r in reasons if "bad signature" in r)


async def test_a_moved_principal_is_dead_lettered(writer: Bus, nats_url: str) -> None:
    """`Bus-Principal` (who published it through the edge) is signed: credited to another
    principal, or to one where there was none, the event no longer verifies."""
    seen: list[str | None] = []

    async def handle(event: JobCreated, envelope: Envelope[JobCreated]) -> None:
        seen.append(envelope.principal)

    with acting_as("alice"):
        first = await writer.publish(JobCreated(title="by alice"), "p1")
    assert (await stored(writer, first.seq)).headers["Bus-Principal"] == "alice"
    original = await stored(writer, (await writer.publish(JobCreated(title="x"), "p0")).seq)
    for n, (signed_as, stored_as) in enumerate([("alice", "root"), (None, "root")]):
        hdrs = {k: v for k, v in original.headers.items() if not k.startswith("Bus-Sig")}
        hdrs["Nats-Msg-Id"] = f"principal-{n}"
        hdrs |= {"Bus-Principal": signed_as} if signed_as else {}
        payload = Protection(signer=WRITER).seal(
            f"jobs.p{n + 2}.created", hdrs["Nats-Msg-Id"], hdrs, original.data
        )
        await put(writer, f"jobs.p{n + 2}.created", payload, hdrs | {"Bus-Principal": stored_as})
    async with Bus(nats_url, protection=REQUIRED) as reader:
        await reader.consume(handle, durable="principals")
        reasons = await dead_letter_reasons(reader, "JOBS", 2)
        await eventually(lambda: len(seen) == 2)
    assert sorted(seen, key=str) == [None, "alice"]  # the two as signed, neither moved one
    assert all(r.startswith("rejected: bad signature") for r in reasons)


async def test_a_consumer_not_requiring_signatures_handles_them_all(
    writer: Bus, nats_url: str
) -> None:
    seen: list[str] = []

    async def handle(event: JobCreated) -> None:
        seen.append(event.title)

    async with Bus(nats_url) as plain:
        await plain.publish(JobCreated(title="unsigned"), "j2")
        await writer.publish(JobCreated(title="signed"), "j1")
        await plain.consume(handle, durable="lenient")
        await eventually(lambda: len(seen) == 2)


async def test_follow_ups_and_atomic_batches_stay_signed(writer: Bus, nats_url: str) -> None:
    done: list[str] = []

    async def follow(event: JobCreated) -> None:
        await writer.publish(JobDone(result=event.title), "j1")  # a derived follow-up id

    async def finish(event: JobDone) -> None:
        done.append(event.result)

    await writer.consume(follow, durable="follow")
    batches = StreamSpec.for_domain("jobs", allow_atomic=True)
    async with Bus(nats_url, streams=[batches], protection=Protection(signer=WRITER)) as atomic:
        await EventStore(atomic).append("jobs", "j7", [JobDone(result="a"), JobDone(result="b")])
    async with Bus(nats_url, protection=REQUIRED) as reader:
        await reader.consume(finish, durable="finish")
        await writer.publish(JobCreated(title="x"), "j1")
        await eventually(lambda: sorted(done) == ["a", "b", "x"])
        assert await reader.dead_letters("JOBS") == []


async def test_a_projection_requiring_signatures_skips_and_dead_letters(nats_url: str) -> None:
    async with Bus(nats_url, streams=app.streams, protection=Protection(signer=WRITER)) as bus:
        await bus.publish(TaskCreated(title="signed"), "t1")
    async with Bus(nats_url, registry=app.registry) as plain:
        await plain.publish(TaskCreated(title="unsigned"), "t2")
    strict = Protection(trusted=[WRITER.public_key], require_signatures=["*"])
    async with (
        Bus(nats_url, registry=app.registry, streams=app.streams, protection=strict) as bus,
        Projector(bus, [app.projections["task"]]),
    ):
        letters = await dead_letter_reasons(bus, "TASKS", 1)
        assert letters[0].startswith("rejected: unsigned")
        view = ProjectionView(bus, app.projections["task"])
        await eventually_async(lambda: view.get("t1"))
        assert await view.get("t2") is None
        envelope = bus.open((await bus.read("TASKS", 1, 1))[0])
        assert envelope.event == TaskCreated(title="signed")
        with pytest.raises(Rejected, match="unsigned"):
            bus.open((await bus.read("TASKS", 2, 1))[0])


def test_seed_and_key_errors_are_clear_and_quote_no_secret(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="cannot read the signing seed file"):
        Signer.from_file(tmp_path / "missing.seed")
    bad = tmp_path / "bad.seed"
    bad.write_text("SUnot-a-seed")
    with pytest.raises(ConfigError, match="not an nkeys seed") as caught:
        Signer.from_file(bad)
    assert "SUnot" not in str(caught.value)
    with pytest.raises(ConfigError, match="trusted signers"):
        Protection(require_signatures=["jobs"])
    with pytest.raises(ConfigError, match="not an nkeys public key"):
        Protection(trusted=["UNOTAKEY"], require_signatures=["jobs"])
    changed = WRITER.public_key[:-1] + ("B" if WRITER.public_key.endswith("A") else "A")
    with pytest.raises(ConfigError, match="bad checksum"):  # (a random key may end in A)
        Protection(trusted=[changed], require_signatures=["jobs"])
    assert WRITER_SEED not in repr(Signer(WRITER_SEED)) + repr(Protection(signer=WRITER))


def verdict(protection: Protection, subject: str, data: bytes, hdrs: dict[str, str]) -> str | None:
    try:
        protection.open(subject, data, hdrs)
    except Rejected as exc:
        return exc.verdict
    return None


@given(
    data=st.binary(max_size=200),
    signature=st.text(max_size=200),
    signer=st.text(max_size=5000),
    key_id=st.text(max_size=5000),
)
def test_hostile_headers_and_payloads_are_rejected_never_crash(
    data: bytes, signature: str, signer: str, key_id: str
) -> None:
    """Any bytes and header values: Rejected with a one-line, bounded reason, or (unsigned
    headers on a domain without the requirement) the bytes as they are."""
    strict = Protection(
        trusted=[WRITER.public_key], require_signatures=["jobs"], keys={"*": KEYRING}
    )
    for subject, hdrs in (
        ("jobs.j1.created", {"Bus-Signature": signature, "Bus-Signer": signer}),
        ("jobs.j1.created", {"Bus-Signature": signature, "Bus-Signer": WRITER.public_key}),
        ("other.j1.created", {"Bus-Key-Id": key_id}),
    ):
        why = verdict(strict, subject, data, hdrs | {"Nats-Msg-Id": "x"})
        assert why is not None or subject.startswith("other")
        assert why is None or len(why) < 500
        assert why is None or signer[60:] == "" or signer not in why
    letters = [b"", b"short", bytes(40)]
    for payload in letters:
        with pytest.raises(Rejected, match="does not authenticate"):
            strict.open("other.j1.created", payload, {"Bus-Key-Id": KEYRING.current})
