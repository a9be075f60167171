"""Encrypted payloads (bus._keyring, bus._protection): streams store ciphertext with
`Bus-Key-Id`; handlers, projections and the edge's reads see plaintext; rotated keys still
decrypt; tampered, moved or unknown-key ciphertext is dead-lettered, never handled."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bus import (
    Bus,
    ConfigError,
    EmbeddedCluster,
    EmbeddedServer,
    Event,
    Keyring,
    ProjectionView,
    Projector,
    Protection,
    Rejected,
    ServerError,
    StreamSpec,
    new_key,
)
from bus._protection import parse_domain_keys
from services.demo import TaskCreated, app
from services.edge import create_app
from services.runtime.settings import Settings
from tests.edge import KEYS, READ, WRITE, serve

from .domain import JOBS, JobCreated, eventually

OLD, NEW = new_key(), new_key()


class SealedNote(Event):
    __domain__ = "sealed"
    __event_name__ = "noted"
    text: str


OLD_ID, NEW_ID = OLD.split(":")[0], NEW.split(":")[0]


def keys(*listed: str, domain: str = "jobs") -> Protection:
    return Protection(keys={domain: Keyring.parse(",".join(listed))})


async def eventually_async(check: Callable[[], Awaitable[object]]) -> None:
    deadline = asyncio.get_running_loop().time() + 15
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within 15 s"
        await asyncio.sleep(0.02)


async def dead_letter_reasons(bus: Bus, stream: str, count: int) -> list[str]:
    reasons: list[str] = []

    async def enough() -> bool:
        reasons[:] = [letter.reason for letter in await bus.dead_letters(stream)]
        return len(reasons) >= count

    await eventually_async(enough)
    assert len(reasons) == count, reasons
    return reasons


@pytest.fixture
async def sealed(nats_url: str) -> AsyncIterator[Bus]:
    async with Bus(nats_url, streams=[JOBS], protection=keys(NEW, OLD)) as bus:
        yield bus


async def test_the_stream_holds_ciphertext_and_handlers_see_plaintext(sealed: Bus) -> None:
    seen: list[str] = []

    async def handle(event: JobCreated) -> None:
        seen.append(event.title)

    result = await sealed.publish(JobCreated(title="top secret plan"), "j1")
    stored = (await sealed.read("JOBS", result.seq, 1))[0]
    assert b"secret" not in stored.data
    assert stored.headers["Bus-Key-Id"] == NEW_ID
    await sealed.consume(handle, durable="reader")  # (registers the event type)
    assert sealed.open(stored).event == JobCreated(title="top secret plan")
    await eventually(lambda: seen == ["top secret plan"])


async def test_a_rotated_key_still_decrypts_old_events(nats_url: str) -> None:
    seen: list[str] = []

    async def handle(event: JobCreated) -> None:
        seen.append(event.title)

    async with Bus(nats_url, streams=[JOBS], protection=keys(OLD)) as before:
        await before.publish(JobCreated(title="sealed with the old key"), "j1")
    async with Bus(nats_url, protection=keys(NEW, OLD)) as after:
        result = await after.publish(JobCreated(title="sealed with the new key"), "j2")
        assert (await after.read("JOBS", result.seq, 1))[0].headers["Bus-Key-Id"] == NEW_ID
        await after.consume(handle, durable="rotated")
        await eventually(lambda: len(seen) == 2)
    assert sorted(seen) == ["sealed with the new key", "sealed with the old key"]


async def test_tampered_moved_and_unknown_key_ciphertext_is_dead_lettered(
    sealed: Bus, nats_url: str
) -> None:
    seen: list[str] = []

    async def handle(event: JobCreated) -> None:
        seen.append(event.title)

    good = await sealed.publish(JobCreated(title="good"), "j1")
    original = (await sealed.read("JOBS", good.seq, 1))[0]
    hdrs = dict(original.headers)
    sealer = keys(NEW)
    fresh = {"Nats-Msg-Id": "tampered-1", "Bus-Event-Type": "JobCreated"}
    data = sealer.seal("jobs.j2.created", "tampered-1", fresh, b'{"title":"x"}')
    flipped = data[:-1] + bytes([data[-1] ^ 1])
    await sealed.js.publish("jobs.j2.created", flipped, headers=fresh)
    await sealed.js.publish("jobs.j1.created", original.data, headers=hdrs | {"Nats-Msg-Id": "m"})
    await sealed.js.publish("jobs.j5.created", original.data, headers=hdrs | {"Nats-Msg-Id": "n"})
    unknown = hdrs | {"Nats-Msg-Id": "u", "Bus-Key-Id": "k-gone"}
    await sealed.js.publish("jobs.j1.created", original.data, headers=unknown)
    await sealed.consume(handle, durable="strict")
    reasons = await dead_letter_reasons(sealed, "JOBS", 4)
    await eventually(lambda: seen)
    assert seen == ["good"]
    assert sum("does not authenticate" in r for r in reasons) == 3
    assert sum("unknown key id 'k-gone'" in r for r in reasons) == 1
    assert all(r.startswith("rejected: undecryptable: ") for r in reasons)
    elsewhere = Bus(nats_url, protection=keys(NEW, domain="other"))  # (opening needs no server)
    with pytest.raises(Rejected, match="no keys here"):  # refused, not shown as garbage
        elsewhere.open(original)


async def test_projections_and_the_edges_reads_show_plaintext(nats_url: str) -> None:
    protection = keys(NEW, domain="tasks")
    api = create_app(app, nats_url, api_keys=KEYS, protection=protection)
    async with (
        Bus(nats_url, registry=app.registry, streams=app.streams, protection=protection) as bus,
        Projector(bus, [app.projections["task"]]),
    ):
        async for edge in serve(api):
            posted = await edge.post(
                "/api/v1/events/tasks.e1.created", json={"title": "hidden"}, headers=WRITE
            )
            assert posted.status_code in (200, 201, 202), posted.text
            await bus.publish(TaskCreated(title="also hidden"), "e2")
            stored = await bus.read("TASKS", 1, 2)
            assert all(b"hidden" not in m.data for m in stored)
            assert all(m.headers["Bus-Key-Id"] == NEW_ID for m in stored)
            view = ProjectionView(bus, app.projections["task"])
            await eventually_async(functools.partial(view.get, "e2"))
            state, _ = await view.get("e1") or (None, 0)
            assert state is not None
            assert state.title == "hidden"
            page = (await edge.get("/api/v1/streams/TASKS/events", headers=READ)).json()
            assert [item["data"]["title"] for item in page["items"]] == ["hidden", "also hidden"]
            got = await edge.get("/api/v1/projections/task/e1", headers=READ)
            assert "hidden" in got.text
            frames = await first_sse(edge, "/events?subject=tasks.>&from_seq=1")
            assert json.loads(frames)["data"]["title"] == "hidden"


async def first_sse(edge, path: str) -> str:  # type: ignore[no-untyped-def]
    async with edge.stream("GET", path, headers=READ) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                return str(line[len("data: ") :])
    raise AssertionError("no SSE event")


async def test_encryption_on_a_cluster(nats_cluster: EmbeddedCluster) -> None:
    seen: list[str] = []

    async def handle(event: SealedNote) -> None:
        seen.append(event.text)

    spec = StreamSpec(name="SEALED_R3", subjects=("sealed.>",), replicas=3)
    protection = keys(NEW, domain="sealed")
    async with Bus(nats_cluster.urls, streams=[spec], protection=protection, replicas=3) as bus:
        result = await bus.publish(SealedNote(text="replicated secret"), "r1")
        assert b"secret" not in (await bus.read("SEALED_R3", result.seq, 1))[0].data
        await bus.consume(handle, durable="r3reader")
        await eventually(lambda: "replicated secret" in seen)


BAD_KEYS = [
    ("jobs=k1:" + base64.b64encode(b"short").decode(), "is 5 bytes; AES-256-GCM needs 32"),
    ("jobs=k1:not base64!", "is not valid base64"),
    ("jobs=bad id:" + base64.b64encode(bytes(32)).decode(), "key id"),
    ("jobs=" + OLD + "," + OLD, "listed twice"),
    ("jobs=nocolon", "id:base64key"),
    ("=" + OLD, "domain=id:base64key"),
    ("/nonexistent/keys.txt", "cannot read the encryption keys file"),
]


# Named by the error: a random key in a test's id differs between pytest-xdist's workers.
@pytest.mark.parametrize(("text", "error"), BAD_KEYS, ids=[error for _, error in BAD_KEYS])
def test_key_settings_errors_are_clear_and_quote_no_key(text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error) as caught:
        parse_domain_keys(text)
    assert OLD.split(":")[1] not in str(caught.value)


def test_keys_from_a_file_and_from_the_environment(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys"
    path.write_text(f"jobs={NEW},{OLD}\ntasks={OLD}\n")
    parsed = parse_domain_keys(str(path))
    assert parsed["jobs"].ids == [NEW_ID, OLD_ID]
    assert parsed["tasks"].ids == [OLD_ID]
    monkeypatch.setenv("BUS_ENCRYPTION_KEYS", f"*={NEW}")
    protection = Settings.from_env().protection
    assert protection is not None
    assert protection.keyring("anything.x.y") is not None
    assert NEW.split(":")[1] not in repr(protection) + repr(Settings.from_env())
    monkeypatch.setenv("BUS_ENCRYPTION_KEYS", "*=k1:AAAA")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env().protection  # noqa: B018
    assert "AAAA" not in str(caught.value)


async def test_the_embedded_server_encrypts_its_store_at_rest(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = EmbeddedServer(store_dir=tmp_path, cipher="chachapoly", store_key="s3cr3t-store-key")
    assert "s3cr3t" not in repr(server)
    with server:
        async with Bus(server.url, streams=[JOBS]) as bus:
            await bus.publish(JobCreated(title="plain-to-bus-but-not-on-disk"), "d1")
    on_disk = b"".join(p.read_bytes() for p in (tmp_path / "jetstream").rglob("*") if p.is_file())
    assert on_disk
    assert b"plain-to-bus-but-not-on-disk" not in on_disk
    with pytest.raises(ServerError, match="cipher must be"):
        EmbeddedServer(store_dir=tmp_path, cipher="rot13", store_key="k").config_text()
