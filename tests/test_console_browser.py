"""The console in a real browser (Debian's chromium, headless) against a running `bus up`
(tests/console.py: the demo's tasks and the pipeline workflow, an admin key and a read-only
one): the key prompt, every page showing data the test publishes, writes (publish, rebuild,
dead-letter replay, compare-and-set, a pipeline run), a read-only key, light and dark, 1280 px
and narrow, and hostile payloads shown as text. The tests share the one process (and the
session's browser), so each publishes under its own ids and counts nothing it did not make.
Screenshots of every page are kept (see `shots`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from selenium.common.exceptions import WebDriverException

from bus import Bus
from services.demo import app
from services.edge import create_app
from tests import browser
from tests.browser import NARROW, WIDE, Page
from tests.console import Backbone, bus_up
from tests.edge import KEYS, WRITE, serve

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
STATES = "return Object.fromEntries([...document.querySelectorAll('svg.dag g.node')].map(g => [g.dataset.step, g.dataset.state]))"  # fmt: skip


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backbone]:
    with bus_up(tmp_path_factory.mktemp("bus-up")) as running:
        yield running


@pytest.fixture
def page(backbone: Backbone, chrome: Any, shots: Path) -> Iterator[Page]:
    opened = Page(chrome, backbone.edge, shots)
    opened.size(WIDE)
    yield opened
    # One origin for every test: the next one starts without a key, in the system's theme.
    with contextlib.suppress(WebDriverException):
        for extra in chrome.window_handles[1:]:
            chrome.switch_to.window(extra)
            chrome.close()
        chrome.switch_to.window(chrome.window_handles[0])
        chrome.get(f"{backbone.edge}/livez")
        chrome.execute_script("sessionStorage.clear(); localStorage.clear()")
    chrome.get("about:blank")  # the console's live requests end first


def buttons(page: Page, label: str) -> list[Any]:
    return [b for b in page.all("main button") if label in (b.text, b.get_attribute("aria-label"))]


def test_key_prompt_then_every_read_page_shows_the_tests_data(
    backbone: Backbone, page: Page
) -> None:
    backbone.publish("tasks.r1.created", title="first task")
    backbone.put("settings", "limits", {"rate": 1})
    page.open()
    page.until(lambda: page.visible("#login"))
    page.shot("login")
    assert page.accessibility() == []  # the key prompt, before any page
    page.login("not-a-key")
    page.until(lambda: "unknown API key" in page.text("#login-error"))
    assert page.js("return sessionStorage.getItem('bus.api-key')") == "not-a-key"
    page.login("w-key")
    page.until(lambda: not page.visible("#login"))
    page.until_text("TASKS")
    assert page.text("#who") == "admin + read + write"
    assert "w-key" not in page.driver.current_url
    assert page.driver.get_cookies() == []
    page.until_text("task_counts")
    page.until_text("nats-server")
    page.until(lambda: "pass" in page.text("main"))
    page.until(lambda: "tasks-worker" in page.text("main"))
    page.until_text("code_analysis")
    page.shot("overview")
    for route, needle, name in (
        ("streams", "tasks.*.*", "streams"),
        ("streams/TASKS", "tasks.r1.created", "stream"),
        ("projections", "task_counts", "projections"),
        ("projections/task?prefix=r1", "first task", "projection-keys"),
        ("components", "nats-server", "components"),
        ("dead-letters", "TASKS", "dead-letters"),
        ("state", "settings", "buckets"),
        ("state/settings", "limits", "bucket"),
        ("state/settings/limits", "rate", "key"),
        ("publish", "TaskCreated", "publish"),
        ("workflows", "4 steps", "workflows"),
        ("nowhere", "No page here", "not-found"),
    ):
        page.go(route)
        page.until_text(needle)
        page.shot(name)
    assert page.accessibility() == []  # the page for no page


def test_publish_from_the_form_then_follow_it_to_its_projection_and_causes(
    backbone: Backbone, page: Page
) -> None:
    page.open("streams/TASKS?subject=tasks.f1.*")  # a live tail here, the form in a second tab
    page.login("w-key")
    page.until(lambda: page.visible("#tail-toggle"))
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
    page.until_text("Published TASKS #")
    page.shot("published")
    page.find("main .ok a").click()
    page.until_text("from the form")
    assert "tasks.f1.created" in page.text()
    page.driver.close()
    page.driver.switch_to.window(tailing)
    page.until_text("from the form", css="ol.tail")
    page.shot("tail-of-the-form")

    page.go("projections/task?prefix=f1")
    page.until_text("completed", timeout=30)
    created, progressed = (backbone.newest("TASKS", f"tasks.f1.{e}")[0] for e in ("created", "progressed"))  # fmt: skip
    page.go(f"streams/TASKS/events/{progressed['seq']}")  # the worker's, caused by the form's
    page.until_text("TaskProgressed")
    page.shot("event")
    follow(page, "Correlation")
    page.until(lambda: page.driver.current_url.endswith(f"#/streams/TASKS/events/{created['seq']}"))  # fmt: skip
    page.until_text(f"Event #{created['seq']}")
    assert "from the form" in page.text()

    # The auditor's event is caused by the worker's TaskCompleted, whose id the worker derived
    # (a UUIDv8, no time in it): the link finds it back from the auditor's event.
    audited = backbone.until(lambda: backbone.newest("TASKS", "tasks.f1.audited"), "the audit")[0]
    completed = backbone.newest("TASKS", "tasks.f1.completed")[0]
    assert completed["id"][14] == "8"
    assert audited["causation_id"] == completed["id"]
    page.go(f"streams/TASKS/events/{audited['seq']}")
    page.until_text("TaskAudited")
    follow(page, "Causation")
    page.until(lambda: page.driver.current_url.endswith(f"#/streams/TASKS/events/{completed['seq']}"))  # fmt: skip
    page.until_text("TaskCompleted")
    page.shot("event-derived-id")


def follow(page: Page, fact: str) -> None:
    """Click the event's link to its related event `fact` (Correlation, Causation)."""
    rows = "return [...document.querySelectorAll('main dl.facts dt')].map(dt => dt.textContent)"
    at = page.js(rows).index(fact)
    link = page.all("main dl.facts dd")[at].find_element("css selector", "a")
    assert "/id/" in (link.get_attribute("href") or "")
    link.click()


def test_live_tail_with_pause_and_resume(backbone: Backbone, page: Page) -> None:
    backbone.publish("tasks.lt0.created", title="before the tail")
    page.open("streams/TASKS?subject=tasks.*.created")
    page.login("w-key")
    page.until_text("tasks.lt0.created")
    page.find("#tail-toggle").click()
    page.until_text("Following tasks.*.created")
    backbone.publish("tasks.lt1.created", title="live one")
    page.until_text("live one", css="ol.tail")
    page.find("#tail-toggle").click()
    page.until_text("Paused at #", css="main")
    backbone.publish("tasks.lt2.created", title="while paused")
    page.find("#tail-toggle").click()
    page.until_text("while paused", css="ol.tail")
    tail = page.text("ol.tail")
    assert "before the tail" not in tail
    assert tail.count("live one") == 1
    assert "progressed" not in tail  # the filter holds in the tail too
    page.shot("tail")


def test_rebuild_shows_progress_up_to_100(backbone: Backbone, page: Page) -> None:
    events = [{"event": "created", "data": {"title": f"t{n}"}} for n in range(50)]
    with backbone.http() as http:
        batch = {"domain": "tasks", "id": "rb", "events": events}
        answer = http.post("/api/v1/events:batch", json=batch, headers=WRITE)
    assert answer.status_code == 201, answer.text
    page.open("projections")
    page.login("w-key")
    page.until(lambda: page.all("button[aria-label='Rebuild task']"))
    page.button("Rebuild task").click()
    page.confirm()
    page.until_text("Rebuilding task")
    page.until(lambda: page.js("return document.querySelector('progress')?.value") == 100, 60)
    page.until_text("100%")
    page.shot("rebuilt")


def test_replay_and_discard_dead_letters_with_confirmation(backbone: Backbone, page: Page) -> None:
    backbone.publish("tasks.dl1.created", title="doomed", fail_times=99)
    backbone.publish("tasks.dl2.created", title="also doomed", fail_times=99)
    first, second = (backbone.dead_letters(f"tasks.dl{n}.created")[0]["seq"] for n in (1, 2))
    page.open("dead-letters/TASKS")
    page.login("w-key")
    page.reload_until(lambda: buttons(page, f"Discard #{first}") and buttons(page, f"Discard #{second}"))  # fmt: skip
    assert "handler failed 5 times" in page.text()
    page.shot("dead-letter-list")
    page.button(f"Discard #{first}").click()
    page.confirm(yes=False)  # cancelled: nothing happens
    assert buttons(page, f"Discard #{first}")
    page.button(f"Discard #{first}").click()
    page.confirm()
    page.until_text(f"Discarded #{first}")
    page.until(lambda: not buttons(page, f"Discard #{first}"))
    page.button(f"Replay #{second}").click()
    page.confirm()
    page.until(lambda: "Replayed to tasks.dl2" in page.text() or "409" in page.text())
    while "409" in page.text():  # within the stream's 1 s duplicate window: again
        page.button(f"Replay #{second}").click()
        page.confirm()
        page.until(lambda: "Replayed to tasks.dl2" in page.text() or "409" in page.text())
    page.shot("dead-letter-replayed")
    again = backbone.newest("TASKS", "tasks.dl2.created")[0]
    detail = backbone.get(f"/api/v1/streams/TASKS/events/{again['seq']}")
    assert detail["headers"]["Bus-Replayed-From"] == f"DLQ_TASKS:{second}"


def test_edit_shared_state_and_a_stale_edit_gets_412(backbone: Backbone, page: Page) -> None:
    backbone.put("settings", "theme", {"dark": False})
    page.open("state/settings/theme")
    page.login("w-key")
    page.until(lambda: page.visible("#kv-value"))
    field = page.find("#kv-value")
    field.clear()
    field.send_keys('{"dark": true}')
    page.button("Save").click()
    page.until_text('"dark": true')
    page.until(lambda: page.visible("#kv-value"))
    assert backbone.get("/api/v1/kv/settings/theme") == {"dark": True}
    backbone.put("settings", "theme", {"dark": "changed elsewhere"})  # the page's is stale
    field = page.find("#kv-value")
    field.clear()
    field.send_keys('{"dark": "mine"}')
    page.button("Save").click()
    page.until_text("412 Precondition Failed")
    page.shot("kv-conflict")
    assert backbone.get("/api/v1/kv/settings/theme") == {"dark": "changed elsewhere"}


def test_a_read_only_key_sees_no_write_button_and_a_forged_write_is_refused(
    backbone: Backbone, page: Page
) -> None:
    backbone.put("settings", "limits", {"rate": 1})
    backbone.publish("tasks.ro1.created", title="doomed", fail_times=99)
    backbone.dead_letters("tasks.ro1.created")
    page.open()
    page.login("r-key")
    page.until(lambda: "read-only" in page.text("#who"))
    for route, needle in (
        ("dead-letters/TASKS", "handler failed"),
        ("projections", "task_counts"),
        ("state/settings", "limits"),
        ("state/settings/limits", "rate"),
        ("publish", "write scope"),
        ("workflows/code_analysis", "needs a key with the write scope"),
    ):
        page.go(route)
        page.until_text(needle)
        assert page.all("[data-write]") == [], route
        labels = {b.text for b in page.all("main button")}
        assert not labels & {"Replay", "Replay all", "Discard", "Rebuild", "Save", "Start run"}, route  # fmt: skip
    page.shot("read-only")
    forged = page.driver.execute_async_script(
        "const done = arguments[0];"
        "fetch('/api/v1/events/tasks.forged1.created', {method: 'POST', headers: {"
        "  Authorization: 'Bearer ' + sessionStorage.getItem('bus.api-key'),"
        "  'Content-Type': 'application/json'}, body: '{\"title\": \"forged\"}'})"
        ".then(r => done(r.status))"
    )
    assert forged == 403
    assert backbone.newest("TASKS", "tasks.forged1.*") == []


async def raw_publish(url: str, subject: str, payload: bytes) -> int:
    """Straight to JetStream (a subject the edge would refuse), as another client might."""
    raw = await nats.connect(url)
    try:
        headers = {"Bus-Event-Type": "TaskCreated", "Bus-Event-Version": "1"}
        return (await raw.jetstream().publish(subject, payload, headers=headers)).seq
    finally:
        await raw.close()


def test_hostile_payloads_subjects_and_values_are_shown_as_text(
    backbone: Backbone, page: Page
) -> None:
    first = backbone.publish("tasks.h1.created", title=HOSTILE)
    backbone.publish("tasks.h2.created", title=f"dead {HOSTILE}", fail_times=99)
    backbone.put("settings", "evil", {"html": HOSTILE})
    subject = "tasks.<img/src=x/onerror=__pwned=3>.created"  # one token: no dot
    seq = asyncio.run(raw_publish(backbone.nats_url, subject, b'{"title": "<script>window.__pwned=4</script>"}'))  # fmt: skip
    page.open("streams/TASKS")
    page.login("w-key")
    page.until_text(subject)
    page.find("#tail-toggle").click()
    page.until_text("Following")
    backbone.publish("tasks.h3.created", title=f"tailed {HOSTILE}")
    page.until_text("tailed <img", css="ol.tail")
    page.go(f"streams/TASKS/events/{first['seq']}")
    page.until_text("window.__pwned=1")
    page.go(f"streams/TASKS/events/{seq}")
    page.until_text(subject)
    page.go("state/settings/evil")
    page.until_text("window.__pwned=2")
    page.go("streams/TASKS/id/<img src=x onerror=window.__pwned=5>?before_seq=<b>1</b>")
    page.until_text("422")
    backbone.dead_letters("tasks.h2.created")
    page.go("dead-letters/TASKS")
    payloads = "return [...document.querySelectorAll('main details pre')].map(p => p.textContent)"
    page.reload_until(lambda: any("dead <img" in p for p in page.js(payloads)))
    page.shot("hostile")
    assert page.js("return window.__pwned") is None
    assert page.js("return document.querySelectorAll('img, main script').length") == 0


def test_a_pipeline_run_from_its_form_turns_green_and_the_overview_counts_runs_live(
    backbone: Backbone, page: Page
) -> None:
    completed = "a[href='#/workflows/code_analysis?status=completed']"
    count = "return +(document.querySelector(arguments[0])?.textContent ?? 0)"  # one read
    page.open()
    page.login("w-key")
    page.until_text("code_analysis")
    before = page.js(count, completed)
    with backbone.http() as http:
        started = http.post("/api/v1/workflows/code_analysis/runs", json={"code": "x = 1\n"}, headers=WRITE)  # fmt: skip
    assert started.status_code == 201, started.text
    page.until(lambda: page.js(count, completed) == before + 1, 30)
    page.js("arguments[0].scrollIntoView()", page.find(completed))
    page.shot("overview-workflows")

    page.go("workflows/code_analysis")
    page.until(lambda: page.visible("textarea#input-code"))  # 64 KiB: a text area
    assert page.find("#input-language").get_attribute("value") == "python"
    page.find("#input-code").send_keys("def f(x):\n    return x + 1\n")
    page.button("Start run").click()
    page.until_text("Ended: completed", timeout=60)
    assert set(page.js(STATES).values()) == {"completed"}
    assert '"grade"' in page.text()
    page.shot("workflow-pipeline")
    page.go("")
    page.until(lambda: page.js(count, completed) == before + 2, 30)


def test_narrow_window_and_dark_theme(page: Page) -> None:
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
    for route, needle in (("streams", "Streams"), ("", "code_analysis")):
        page.go(route)
        page.until_text(needle)
        wide = page.js("return document.documentElement.scrollWidth")
        assert wide <= NARROW[0], f"#/{route} scrolls sideways"
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


def test_the_theme_follows_the_system_until_chosen(page: Page) -> None:
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


def test_every_page_passes_axe_in_light_and_dark(backbone: Backbone, page: Page) -> None:
    checked = backbone.publish("tasks.a1.created", title="checked")
    backbone.put("settings", "limits", {"rate": 1})
    routes = (
        ("", "code_analysis"),
        ("streams", "TASKS"),
        ("streams/TASKS?subject=tasks.a1.*", "tasks.a1.created"),  # a few rows: axe is slow
        (f"streams/TASKS/events/{checked['seq']}", "checked"),
        ("projections", "task_counts"),
        ("projections/task?prefix=a1", "checked"),
        ("dead-letters", "TASKS"),
        ("dead-letters/TASKS", "Dead letters of TASKS"),
        ("components", "nats-server"),
        ("state", "settings"),
        ("state/settings", "limits"),
        ("state/settings/limits", "rate"),
        ("publish", "TaskCompleted"),
    )
    page.open()
    page.login("w-key")
    assert page.audit(routes) == {}


@pytest.fixture
async def public(tasks: Bus, nats_url: str) -> AsyncIterator[str]:
    """In this process: `BUS_PUBLIC_READS` is another edge's setting, and a second `bus up`
    for one test would cost more than this whole check."""
    async for client in serve(create_app(app, nats_url, api_keys=KEYS, public_reads=True)):
        answer = await client.post("/api/v1/events/tasks.p1.created", json={"title": "public"}, headers=WRITE)  # fmt: skip
        assert answer.status_code == 201, answer.text
        yield str(client.base_url)


async def test_public_reads_need_no_key(public: str, chrome: Any, shots: Path) -> None:
    page = Page(chrome, public, shots)

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
