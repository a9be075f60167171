"""The console in a real browser (Debian's chromium, headless) against a real edge under
uvicorn with the demo app's worker and projector on a real nats-server: the key prompt,
every page showing data the test publishes, writes (publish, rebuild, dead-letter replay,
compare-and-set), a read-only key, public reads, light and dark, 1280 px and narrow, and
hostile payloads shown as text. Screenshots of every page are kept (see `shots`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from bus import Bus, Component, Registration
from services.demo import TaskCreated, app
from services.edge import create_app
from services.runtime.projector import ProjectorService
from tests import browser
from tests.browser import NARROW, WIDE, Page
from tests.edge import KEYS, WRITE, serve

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


@contextlib.asynccontextmanager
async def backbone(nats_url: str, **edge: Any) -> AsyncIterator[tuple[Bus, httpx.AsyncClient]]:
    """The demo's worker and projector service, a registered component and the edge; TASKS
    keeps duplicates for 1 s only, so a dead letter can be replayed a second later."""
    streams = [dataclasses.replace(s, duplicate_window=1.0) for s in app.streams]
    async with Bus(
        nats_url,
        registry=app.registry,
        streams=streams,
        buckets=app.buckets.values(),
        router=app.router,
        drain_timeout=2.0,
    ) as bus:
        stop = asyncio.Event()
        projector = asyncio.create_task(ProjectorService(bus, app).run(stop))
        try:
            api = create_app(app, nats_url, api_keys=KEYS, health_interval=0.5, **edge)
            async for client in serve(api):
                billing = Component(
                    name="billing", version="1.4.2", health_url=f"{client.base_url}/livez"
                )
                async with Registration(bus, billing):
                    yield bus, client
        finally:
            stop.set()
            await projector


@pytest.fixture
async def console(nats_url: str, chrome: Any, shots: Path) -> AsyncIterator[tuple[Bus, Page]]:
    async with backbone(nats_url) as (bus, client):
        page = Page(chrome, str(client.base_url), shots)
        await page.run(lambda: page.size(WIDE))
        yield bus, page
        await page.run(lambda: chrome.get("about:blank"))  # its live requests end first


async def publish(page: Page, subject: str, **fields: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=page.base) as http:
        answer = await http.post(f"/api/v1/events/{subject}", json=fields, headers=WRITE)
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_key_prompt_then_every_read_page_shows_the_tests_data(
    console: tuple[Bus, Page],
) -> None:
    _, page = console
    await publish(page, "tasks.r1.created", title="first task")

    def log_in() -> None:
        page.open()
        page.until(lambda: page.visible("#login"))
        page.shot("login")
        page.login("not-a-key")
        page.until(lambda: "unknown API key" in page.text("#login-error"))
        assert page.js("return sessionStorage.getItem('bus.api-key')") == "not-a-key"
        page.login("w-key")
        page.until(lambda: not page.visible("#login"))
        page.until_text("TASKS")
        assert page.text("#who") == "read + write"
        assert "w-key" not in page.driver.current_url
        assert page.driver.get_cookies() == []

    await page.run(log_in)

    def overview() -> None:
        page.until_text("task_counts")
        page.until_text("billing")
        page.until(lambda: "pass" in page.text("main"))
        page.until(lambda: "tasks-worker" in page.text("main"))
        page.shot("overview")

    await page.run(overview)
    for route, needle, name in (
        ("streams", "tasks.*.*", "streams"),
        ("streams/TASKS", "tasks.r1.created", "stream"),
        ("projections", "task_counts", "projections"),
        ("projections/task", "first task", "projection-keys"),
        ("components", "1.4.2", "components"),
        ("dead-letters", "TASKS", "dead-letters"),
        ("state", "settings", "buckets"),
        ("publish", "TaskCreated", "publish"),
        ("nowhere", "No page here", "not-found"),
    ):

        def visit(route: str = route, needle: str = needle, name: str = name) -> None:
            page.go(route)
            page.until_text(needle)
            page.shot(name)

        await page.run(visit)


async def test_publish_from_the_form_then_follow_it_to_its_projection_and_cause(
    console: tuple[Bus, Page],
) -> None:
    _, page = console

    def publish_from_form() -> None:
        page.open("streams/TASKS")  # a live tail here, the form in a second tab
        page.login("w-key")
        page.until_text("no events yet")
        page.find("#tail-toggle").click()
        page.until_text("Following")
        tailing = page.driver.current_window_handle
        page.js("window.open('#/publish')")  # the tab's key goes with it (sessionStorage)
        page.driver.switch_to.window(page.driver.window_handles[-1])
        page.until(lambda: page.visible("#event-type"))
        page.js(
            "const s = document.getElementById('event-type'); s.value = 'TaskCreated';"
            "s.dispatchEvent(new Event('change'))"
        )
        page.until(lambda: page.visible("#field-title"))
        page.find("#aggregate-id").send_keys("f1")
        page.find("#field-title").send_keys("from the form")
        page.button("Publish").click()
        page.until_text("Published TASKS #1")
        page.shot("published")
        page.find("main .ok a").click()
        page.until_text("from the form")
        assert "tasks.f1.created" in page.text()
        page.driver.close()
        page.driver.switch_to.window(tailing)
        page.until_text("from the form", css="ol.tail")
        page.shot("tail-of-the-form")

    await page.run(publish_from_form)

    def projected_and_caused() -> None:
        page.go("projections/task?prefix=f1")
        page.until_text("completed", timeout=30)
        page.go("streams/TASKS/events/2")  # the worker's progressed event, caused by #1
        page.until_text("TaskProgressed")
        page.shot("event")
        links = [a for a in page.all("main dd a") if "/id/" in (a.get_attribute("href") or "")]
        assert links, page.text()
        links[0].click()
        page.until(lambda: page.driver.current_url.endswith("#/streams/TASKS/events/1"))
        page.until_text("Event #1")
        assert "from the form" in page.text()

    await page.run(projected_and_caused)


async def test_live_tail_with_pause_and_resume(console: tuple[Bus, Page]) -> None:
    _, page = console
    await publish(page, "tasks.old.created", title="before the tail")

    def start() -> None:
        page.open("streams/TASKS?subject=tasks.*.created")
        page.login("w-key")
        page.until_text("tasks.old.created")
        page.find("#tail-toggle").click()
        page.until_text("Following tasks.*.created")

    await page.run(start)
    await publish(page, "tasks.t1.created", title="live one")
    await page.run(lambda: page.until_text("live one", css="ol.tail"))
    await page.run(lambda: page.find("#tail-toggle").click())
    await page.run(lambda: page.until_text("Paused at #", css="main"))
    await publish(page, "tasks.t2.created", title="while paused")
    await page.run(lambda: page.find("#tail-toggle").click())
    await page.run(lambda: page.until_text("while paused", css="ol.tail"))
    tail = await page.run(lambda: page.text("ol.tail"))
    assert "before the tail" not in tail
    assert tail.count("live one") == 1
    assert "progressed" not in tail  # the filter holds in the tail too
    await page.run(lambda: page.shot("tail"))


async def test_rebuild_shows_progress_up_to_100(console: tuple[Bus, Page]) -> None:
    bus, page = console
    for n in range(150):
        await bus.publish(TaskCreated(title=f"t{n}"), f"r{n}")

    def rebuild() -> None:
        page.open("projections")
        page.login("w-key")
        page.until(lambda: page.all("button[aria-label='Rebuild task']"))
        page.button("Rebuild task").click()
        page.confirm()
        page.until_text("Rebuilding task")
        page.until(lambda: page.js("return document.querySelector('progress')?.value") == 100, 60)
        page.until_text("100%")
        page.shot("rebuilt")

    await page.run(rebuild)


async def test_replay_and_discard_dead_letters_with_confirmation(
    console: tuple[Bus, Page],
) -> None:
    bus, page = console
    await bus.publish(TaskCreated(title="doomed", fail_times=99), "d1")
    await bus.publish(TaskCreated(title="also doomed", fail_times=99), "d2")

    def replay() -> None:
        page.open("dead-letters/TASKS")
        page.login("w-key")
        page.reload_until(lambda: len(page.all("main tbody tr")) == 2)
        assert "handler failed 5 times" in page.text()
        page.shot("dead-letter-list")
        seqs = sorted(int(r.text.split()[0]) for r in page.all("main tbody tr"))
        page.button(f"Discard #{seqs[0]}").click()
        page.confirm(yes=False)  # cancelled: nothing happens
        assert len(page.all("main tbody tr")) == 2
        page.button(f"Discard #{seqs[0]}").click()
        page.confirm()
        page.until_text(f"Discarded #{seqs[0]}")
        page.until(lambda: len(page.all("main tbody tr")) == 1)
        page.button(f"Replay #{seqs[1]}").click()
        page.confirm()
        page.until(lambda: "Replayed to tasks.d" in page.text() or "409" in page.text())
        while "409" in page.text():  # within the stream's 1 s duplicate window: again
            page.button(f"Replay #{seqs[1]}").click()
            page.confirm()
            page.until(lambda: "Replayed to tasks.d" in page.text() or "409" in page.text())
        page.shot("dead-letter-replayed")

    await page.run(replay)
    replayed = await bus.read("TASKS", 1, 1000)
    assert any("Bus-Replayed-From" in m.headers for m in replayed)


async def test_edit_shared_state_and_a_stale_edit_gets_412(console: tuple[Bus, Page]) -> None:
    bus, page = console
    settings = bus.bucket("settings")
    await settings.put("theme", {"dark": False})

    def edit() -> None:
        page.open("state/settings/theme")
        page.login("w-key")
        page.until(lambda: page.visible("#kv-value"))
        field = page.find("#kv-value")
        field.clear()
        field.send_keys('{"dark": true}')
        page.button("Save").click()
        page.until_text('"dark": true')
        page.until(lambda: page.visible("#kv-value"))

    await page.run(edit)
    current = await settings.get("theme")
    assert current is not None
    assert current.value == {"dark": True}
    await settings.put("theme", {"dark": "changed elsewhere"})  # the page's revision is stale

    def stale() -> None:
        field = page.find("#kv-value")
        field.clear()
        field.send_keys('{"dark": "mine"}')
        page.button("Save").click()
        page.until_text("412 Precondition Failed")
        page.shot("kv-conflict")

    await page.run(stale)
    after = await settings.get("theme")
    assert after is not None
    assert after.value == {"dark": "changed elsewhere"}


async def test_a_read_only_key_sees_no_write_button_and_a_forged_write_is_refused(
    console: tuple[Bus, Page],
) -> None:
    bus, page = console
    await bus.bucket("settings").put("limits", {"rate": 1})
    await bus.publish(TaskCreated(title="doomed", fail_times=99), "d1")

    def read_only() -> None:
        page.open()
        page.login("r-key")
        page.until(lambda: "read-only" in page.text("#who"))
        page.go("dead-letters/TASKS")
        page.reload_until(lambda: "handler failed" in page.text())
        for route, needle in (
            ("dead-letters/TASKS", "handler failed"),
            ("projections", "task_counts"),
            ("state/settings", "limits"),
            ("state/settings/limits", "rate"),
            ("publish", "write scope"),
        ):
            page.go(route)
            page.until_text(needle)
            assert page.all("[data-write]") == [], route
            labels = {b.text for b in page.all("main button")}
            assert not labels & {"Replay", "Replay all", "Discard", "Rebuild", "Save"}, route
        page.shot("read-only")
        forged = page.driver.execute_async_script(
            "const done = arguments[0];"
            "fetch('/api/v1/events/tasks.x.created', {method: 'POST', headers: {"
            "  Authorization: 'Bearer ' + sessionStorage.getItem('bus.api-key'),"
            "  'Content-Type': 'application/json'}, body: '{\"title\": \"forged\"}'})"
            ".then(r => done(r.status))"
        )
        assert forged == 403

    await page.run(read_only)
    assert all(b"forged" not in m.data for m in await bus.read("TASKS", 1, 1000))


async def test_hostile_payloads_subjects_and_values_are_shown_as_text(
    console: tuple[Bus, Page], nats_url: str
) -> None:
    bus, page = console
    first = await publish(page, "tasks.h1.created", title=HOSTILE)
    await publish(page, "tasks.h2.created", title=f"dead {HOSTILE}", fail_times=99)
    await bus.bucket("settings").put("evil", {"html": HOSTILE})
    subject = "tasks.<img/src=x/onerror=__pwned=3>.created"  # one token: no dot
    raw = await nats.connect(nats_url)
    try:
        stored = await raw.jetstream().publish(
            subject,
            b'{"title": "<script>window.__pwned=4</script>"}',
            headers={"Bus-Event-Type": "TaskCreated", "Bus-Event-Version": "1"},
        )
    finally:
        await raw.close()

    def tail() -> None:
        page.open("streams/TASKS")
        page.login("w-key")
        page.until_text(subject)
        page.find("#tail-toggle").click()
        page.until_text("Following")

    await page.run(tail)
    await publish(page, "tasks.h3.created", title=f"tailed {HOSTILE}")

    def look() -> None:
        page.until_text("tailed <img", css="ol.tail")
        page.go(f"streams/TASKS/events/{first['seq']}")
        page.until_text("window.__pwned=1")
        page.go(f"streams/TASKS/events/{stored.seq}")
        page.until_text(subject)
        page.go("state/settings/evil")
        page.until_text("window.__pwned=2")
        page.go("dead-letters/TASKS")
        payloads = (
            "return [...document.querySelectorAll('main details pre')].map(p => p.textContent)"
        )
        page.reload_until(lambda: any("dead <img" in p for p in page.js(payloads)))
        page.shot("hostile")
        assert page.js("return window.__pwned") is None
        assert page.js("return document.querySelectorAll('img, main script').length") == 0

    await page.run(look)


async def test_narrow_window_and_dark_theme(console: tuple[Bus, Page]) -> None:
    _, page = console

    def narrow_and_dark() -> None:
        page.size(NARROW)
        page.open()
        page.login("w-key")
        page.until_text("TASKS")
        assert not page.visible("#nav")
        page.find("#menu").click()
        page.until(lambda: page.visible("#nav"))
        assert page.find("#menu").get_attribute("aria-expanded") == "true"
        page.shot("narrow-menu")
        page.find("#nav a[href='#/streams']").click()
        page.until_text("Streams")
        assert not page.visible("#nav")  # closed on navigation
        wide = page.js("return document.documentElement.scrollWidth")
        assert wide <= NARROW[0], "the page scrolls sideways"
        before = page.js("return document.documentElement.dataset.theme")
        page.find("#theme").click()
        after = page.js("return document.documentElement.dataset.theme")
        assert {before, after} == {"light", "dark"}
        if after != "dark":
            page.find("#theme").click()
        background = page.js("return getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(17, 21, 27)"
        page.shot("narrow-dark")
        page.size(WIDE)
        page.shot("wide-dark")
        page.js("localStorage.removeItem('bus.theme')")

    await page.run(narrow_and_dark)


async def test_the_theme_follows_the_system_until_chosen(console: tuple[Bus, Page]) -> None:
    _, page = console

    def system_dark() -> None:
        cdp = page.driver.execute_cdp_cmd
        cdp("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})  # fmt: skip
        try:
            page.open()
            page.login("w-key")
            assert page.js("return document.documentElement.dataset.theme") == "dark"
            page.until_text("TASKS")
            page.shot("overview-dark")
        finally:
            cdp("Emulation.setEmulatedMedia", {"features": []})
        page.open()
        assert page.js("return document.documentElement.dataset.theme") == "light"

    await page.run(system_dark)


async def test_public_reads_need_no_key(nats_url: str, chrome: Any, shots: Path) -> None:
    async with backbone(nats_url, public_reads=True) as (_, client):
        page = Page(chrome, str(client.base_url), shots)
        await publish(page, "tasks.p1.created", title="public")

        def keyless() -> None:
            page.size(WIDE)
            page.open("streams/TASKS")
            page.until_text("tasks.p1.created")
            assert not page.visible("#login")
            assert page.text("#who") == "public reads, no key · read-only"
            page.go("projections")
            page.until_text("task_counts")
            assert page.all("[data-write]") == []
            page.shot("public-reads")
            page.find("#use-key").click()  # a key adds what it may write
            page.login("w-key")
            page.until(lambda: page.text("#who") == "read + write")
            page.until(lambda: page.all("[data-write]"))
            chrome.get("about:blank")

        await page.run(keyless)


async def test_every_page_passes_axe_in_light_and_dark(console: tuple[Bus, Page]) -> None:
    bus, page = console
    await bus.publish(TaskCreated(title="checked"), "a1")
    await bus.bucket("settings").put("limits", {"rate": 1})
    routes = (
        ("", "task_counts"),
        ("streams", "TASKS"),
        ("streams/TASKS", "tasks.a1.created"),
        ("streams/TASKS/events/1", "checked"),
        ("projections", "task_counts"),
        ("projections/task", "a1"),
        ("dead-letters", "TASKS"),
        ("dead-letters/TASKS", "No dead letters"),
        ("components", "billing"),
        ("state", "settings"),
        ("state/settings", "limits"),
        ("state/settings/limits", "rate"),
        ("publish", "TaskCompleted"),
    )

    def audit() -> None:
        page.open()
        page.login("w-key")
        failures = page.audit(routes)
        page.js("localStorage.removeItem('bus.theme')")
        assert failures == {}

    await page.run(audit)
