"""The API routes the console needs (and any client may use), under a real uvicorn against a
real nats-server: newest-first stream pages with a subject filter, one event with its
headers, an event by id, consumers, dead letters, rebuilds, buckets and the caller's session;
and the console's own files with their security headers. Bad input gets a clear 4xx."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bus import Bus
from services.demo import TaskCreated, app
from services.edge import create_app
from tests.edge import KEYS, READ, WRITE, serve

EVENTS = "/api/v1/streams/TASKS/events"
DEAD = "/api/v1/streams/TASKS/dead-letters"
PROBLEM = "application/problem+json"


def refused(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def publish(edge: httpx.AsyncClient, subject: str, **fields: Any) -> dict[str, Any]:
    answer = await edge.post(f"/api/v1/events/{subject}", json=fields, headers=WRITE)
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_newest_first_pages_by_sequence_with_a_subject_filter(
    edge: httpx.AsyncClient,
) -> None:
    for n in range(7):
        await publish(edge, f"tasks.{'a' if n % 3 == 0 else 'b'}{n}.created", title=f"t{n}")
    page = (await edge.get(EVENTS, params={"newest": "true", "limit": 3}, headers=READ)).json()
    assert [e["seq"] for e in page["items"]] == [7, 6, 5]
    assert page["next_before_seq"] == 5
    older = await edge.get(EVENTS, params={"before_seq": 5, "limit": 3}, headers=READ)
    assert [e["seq"] for e in older.json()["items"]] == [4, 3, 2]
    last = (await edge.get(EVENTS, params={"before_seq": 2, "limit": 3}, headers=READ)).json()
    assert [e["seq"] for e in last["items"]] == [1]
    assert last["next_before_seq"] is None

    only_a = await edge.get(
        EVENTS, params={"newest": "true", "subject": "tasks.a*.>", "limit": 2}, headers=READ
    )
    refused(only_a, 400)  # not a pattern: a wildcard is a whole token
    filtered = (
        await edge.get(
            EVENTS, params={"newest": "true", "subject": "tasks.a6.*", "limit": 2}, headers=READ
        )
    ).json()
    assert [e["subject"] for e in filtered["items"]] == ["tasks.a6.created"]
    assert filtered["next_before_seq"] is None
    forward = (await edge.get(EVENTS, params={"subject": "tasks.a0.*"}, headers=READ)).json()
    assert [e["seq"] for e in forward["items"]] == [1]


async def test_one_event_with_every_header_and_found_by_its_id(edge: httpx.AsyncClient) -> None:
    stored = await publish(edge, "tasks.x1.created", title="find me")
    one = (await edge.get(f"{EVENTS}/{stored['seq']}", headers=READ)).json()
    assert one["data"] == {"title": "find me", "fail_times": 0}
    assert one["headers"]["Nats-Msg-Id"] == stored["id"]
    assert one["headers"]["Bus-Event-Type"] == "TaskCreated"
    found = (await edge.get(f"{EVENTS}/by-id/{stored['id']}", headers=READ)).json()
    assert found["seq"] == stored["seq"]
    refused(await edge.get(f"{EVENTS}/99", headers=READ), 404)
    refused(await edge.get(f"{EVENTS}/0", headers=READ), 422)
    refused(await edge.get(f"{EVENTS}/x", headers=READ), 422)
    refused(await edge.get(f"{EVENTS}/{2**64 + 1}", headers=READ), 422)
    refused(await edge.get("/api/v1/streams/<script>/consumers", headers=READ), 404)
    refused(await edge.get(f"{EVENTS}/by-id/not-a-uuid", headers=READ), 400)
    uuid4 = "6f1c64a2-54a8-4c1e-9a8e-0f6a4b8f6d1e"
    refused(await edge.get(f"{EVENTS}/by-id/{uuid4}", headers=READ), 400)
    absent = "01a24fea-9737-7378-82db-4f3426aba790"  # a UUIDv7 of another time
    refused(await edge.get(f"{EVENTS}/by-id/{absent}", headers=READ), 404)
    refused(await edge.get(f"{EVENTS}/by-id/{'f' * 65}", headers=READ), 422)
    refused(await edge.get("/api/v1/streams/NOPE/events/1", headers=READ), 404)
    refused(await edge.get(f"{EVENTS}/1"), 401)


async def test_stream_page_bad_input_is_4xx(edge: httpx.AsyncClient) -> None:
    for params in (
        {"limit": 0},
        {"limit": 1001},
        {"before_seq": 0},
        {"before_seq": "x"},
        {"subject": "a" * 300},
        {"newest": "maybe"},
        {"from_seq": 2**64 + 1},
        {"before_seq": 2**64 + 1},
    ):
        refused(await edge.get(EVENTS, params=params, headers=READ), 422)
    for pattern in ("tasks..x", "tasks.>.x", "<script>", "a b"):
        refused(await edge.get(EVENTS, params={"subject": pattern}, headers=READ), 400)
    refused(await edge.get("/api/v1/streams/a.b/events", headers=READ), 404)
    refused(await edge.get(EVENTS, params={"newest": "true"}), 401)


async def test_consumers_and_buckets_and_session(tasks: Bus, edge: httpx.AsyncClient) -> None:
    consumers = (await edge.get("/api/v1/streams/TASKS/consumers", headers=READ)).json()
    assert all({"name", "pending", "ack_pending"} <= set(c) for c in consumers)
    refused(await edge.get("/api/v1/streams/NOPE/consumers", headers=READ), 404)
    buckets = (await edge.get("/api/v1/kv", headers=READ)).json()
    assert [b["name"] for b in buckets] == ["settings"]
    assert (await edge.get("/api/v1/session", headers=WRITE)).json() == {
        "app": "tasks",
        "scopes": ["read", "write"],
        "public_reads": False,
        "grafana_url": None,
    }
    assert (await edge.get("/api/v1/session", headers=READ)).json()["scopes"] == ["read"]
    refused(await edge.get("/api/v1/session"), 401)
    refused(await edge.get("/api/v1/session", headers={"Authorization": "Bearer nope"}), 401)
    refused(await edge.get("/api/v1/session", headers={"Authorization": "Basic w-key"}), 401)


@pytest.fixture
async def public(tasks: Bus, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    api = create_app(
        app, nats_url, api_keys=KEYS, public_reads=True, grafana_url="http://grafana.test:3000"
    )
    async for client in serve(api):
        yield client


async def test_public_reads_need_no_key_but_writes_do(public: httpx.AsyncClient) -> None:
    session = (await public.get("/api/v1/session")).json()
    assert session["scopes"] == []
    assert session["public_reads"] is True
    assert session["grafana_url"] == "http://grafana.test:3000"
    assert (await public.get(EVENTS, params={"newest": "true"})).status_code == 200
    refused(await public.post(f"{DEAD}:replay"), 401)
    refused(await public.post(f"{DEAD}:replay", headers=READ), 403)
    refused(await public.post("/api/v1/projections/task:rebuild", headers=READ), 403)


@pytest.fixture
async def failing(nats_url: str) -> AsyncIterator[tuple[Bus, httpx.AsyncClient]]:
    """The demo with its worker, on a TASKS stream whose duplicate window is 1 s (a dead
    letter can be replayed a second after it was first stored)."""
    streams = [dataclasses.replace(s, duplicate_window=1.0) for s in app.streams]
    async with Bus(
        nats_url, registry=app.registry, streams=streams, router=app.router, drain_timeout=2.0
    ) as bus:
        async for client in serve(create_app(app, nats_url, api_keys=KEYS)):
            yield bus, client


async def dead_letters(edge: httpx.AsyncClient) -> list[dict[str, Any]]:
    answer = await edge.get(DEAD, headers=READ)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_dead_letters_listed_replayed_and_discarded(
    failing: tuple[Bus, httpx.AsyncClient],
) -> None:
    bus, edge = failing
    assert await dead_letters(edge) == []
    await bus.publish(TaskCreated(title="<b>doomed</b>", fail_times=99), "d1")
    await bus.publish(TaskCreated(title="also doomed", fail_times=99), "d2")
    deadline = time.monotonic() + 60  # five attempts each, with backoff
    while len(letters := await dead_letters(edge)) < 2:
        assert time.monotonic() < deadline, letters
        await asyncio.sleep(0.1)
    first, second = sorted(letters, key=lambda d: d["original_subject"])  # either may be first
    assert first["attempts"] == 5
    assert first["original_subject"] == "tasks.d1.created"
    assert "<b>doomed</b>" in first["data"]
    assert first["reason"].startswith("handler failed 5 times")

    refused(await edge.post(f"{DEAD}/{first['seq']}:replay"), 401)
    refused(await edge.post(f"{DEAD}/{first['seq']}:replay", headers=READ), 403)
    refused(await edge.post(f"{DEAD}/{first['seq']}:discard", headers=READ), 403)
    refused(await edge.post(f"{DEAD}/999:replay", headers=WRITE), 404)
    refused(await edge.post(f"{DEAD}/999:discard", headers=WRITE), 404)
    refused(await edge.post(f"{DEAD}/0:replay", headers=WRITE), 422)
    refused(await edge.post(f"{DEAD}/x:replay", headers=WRITE), 422)
    refused(await edge.post("/api/v1/streams/a.b/dead-letters:replay", headers=WRITE), 400)
    refused(await edge.get("/api/v1/streams/NOPE/dead-letters", headers=READ), 404)
    refused(await edge.get(DEAD, params={"limit": 0}, headers=READ), 422)
    refused(await edge.get(DEAD, params={"from_seq": 2**64 + 1}, headers=READ), 422)
    refused(await edge.post(f"{DEAD}/{2**64 + 1}:discard", headers=WRITE), 422)
    refused(await edge.get("/api/v1/streams/<script>/dead-letters", headers=READ), 400)
    refused(await edge.post("/api/v1/projections/<script>:rebuild", headers=WRITE), 404)
    assert len(await dead_letters(edge)) == 2  # nothing changed

    replayed = None
    while replayed is None or replayed.status_code == 409:  # inside the 1 s duplicate window
        replayed = await edge.post(f"{DEAD}/{first['seq']}:replay", headers=WRITE)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["subject"] == "tasks.d1.created"
    gone = await edge.post(f"{DEAD}/{second['seq']}:discard", headers=WRITE)
    assert gone.status_code == 204
    assert [d["seq"] for d in await dead_letters(edge)] == []
    again = (await edge.get(f"{EVENTS}/{replayed.json()['seq']}", headers=READ)).json()
    assert again["headers"]["Bus-Replayed-From"] == f"DLQ_TASKS:{first['seq']}"


async def test_an_id_a_handler_derived_is_found_back_from_what_it_caused(
    failing: tuple[Bus, httpx.AsyncClient],
) -> None:
    """The worker's events carry ids derived from the message it handled (UUIDv8: no time
    in them); they are read back by sequence from the event linking to them."""
    _, edge = failing
    created = await publish(edge, "tasks.v8.created", title="derived")
    deadline = time.monotonic() + 30
    while not (done := await newest(edge, "tasks.v8.completed")):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    completed = done[0]
    assert uuid.UUID(completed["id"]).version == 8
    assert completed["causation_id"] == created["id"]
    by_id = f"{EVENTS}/by-id/{completed['id']}"
    for params in ({}, {"before_seq": completed["seq"] + 1}, {"before_seq": 2**62}):
        found = await edge.get(by_id, params=params, headers=READ)
        assert found.status_code == 200, (params, found.text)
        assert found.json()["seq"] == completed["seq"]
        assert found.json()["headers"]["Nats-Msg-Id"] == completed["id"]
    refused(await edge.get(by_id, params={"before_seq": completed["seq"]}, headers=READ), 404)
    absent = "0f1c64a2-54a8-8c1e-9a8e-0f6a4b8f6d1e"  # a UUIDv8 the stream does not hold
    refused(await edge.get(f"{EVENTS}/by-id/{absent}", headers=READ), 404)
    cause = await edge.get(f"{EVENTS}/by-id/{created['id']}", params={"before_seq": 1}, headers=READ)  # fmt: skip
    assert cause.json()["seq"] == created["seq"]  # a UUIDv7 is found by its time
    for bad in (0, -1, "x", 2**64 + 1, "<script>", "1" * 300):
        refused(await edge.get(by_id, params={"before_seq": bad}, headers=READ), 422)
    refused(await edge.get(by_id, params={"before_seq": 1}), 401)
    refused(await edge.get("/api/v1/streams/NOPE/events/by-id/" + absent, headers=READ), 404)


async def newest(edge: httpx.AsyncClient, subject: str) -> list[dict[str, Any]]:
    page = await edge.get(EVENTS, params={"newest": "true", "subject": subject}, headers=READ)
    assert page.status_code == 200, page.text
    items: list[dict[str, Any]] = page.json()["items"]
    return items


async def test_rebuild_needs_a_projector_and_a_known_projection(
    tasks: Bus, edge: httpx.AsyncClient
) -> None:
    refused(await edge.post("/api/v1/projections/nope:rebuild", headers=WRITE), 404)
    refused(await edge.get("/api/v1/projections/nope:rebuild", headers=READ), 404)
    refused(await edge.get("/api/v1/projections/task:rebuild"), 401)
    idle = (await edge.get("/api/v1/projections/task:rebuild", headers=READ)).json()
    assert (idle["name"], idle["rebuilding"], idle["progress"]) == ("task", 0, None)
    refused(await edge.post("/api/v1/projections/task:rebuild"), 401)
    refused(await edge.post("/api/v1/projections/task:rebuild", headers=READ), 403)
    # The fixture runs projections in process, not the projector service that answers.
    refused(await edge.post("/api/v1/projections/task:rebuild", headers=WRITE), 503)


async def test_console_files_carry_security_headers(edge: httpx.AsyncClient) -> None:
    page = await edge.get("/ui/")
    assert page.status_code == 200
    assert '<script type="module" src="app.js"></script>' in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    script = await edge.get("/ui/app.js")
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert script.headers["content-security-policy"] == csp
    assert (await edge.get("/ui", follow_redirects=False)).status_code in (301, 307, 308)
    for path in ("/ui/nope.js", "/ui/../app.py", "/ui/%2e%2e/__init__.py", "/ui/..%2f__init__.py"):
        assert (await edge.get(path)).status_code == 404, path
    assert (await edge.post("/ui/")).status_code == 405


def test_no_markup_sinks_in_the_console() -> None:
    """Data goes into the page as text: no innerHTML, outerHTML, insertAdjacentHTML,
    document.write or eval anywhere in the console's scripts, and no inline script."""
    from services.edge.console import STATIC

    scripts = list(STATIC.rglob("*.js"))
    assert len(scripts) >= 8
    for path in scripts:
        text = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{path.name} uses {sink}"
    html = (STATIC / "index.html").read_text()
    assert "<script>" not in html
    assert " on" not in html.replace(" only", "")  # no inline handlers (onclick=...)
