"""The console's Workflows pages in a real browser (the session's chromium) against a real
edge under uvicorn, with a small shop app's workflow worker and projections running here:
definitions drawn as DAGs, a run started from the form turning green, a failing run's failed
and skipped steps, cancel with confirmation, runs by status paged with the cursor, a
read-only key, hostile outputs and errors shown as text, narrow windows, axe in both themes.

In this process, not under `bus up`: these need a workflow whose steps fail or wait on
demand (the shop's `fail` and `hold`), which the product's apps rightly lack; the pipeline's
run from its form runs against `bus up` (tests/test_console_browser.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from bus import App, PermanentError, RunContext, Step, Workflow
from bus.testing import run_app
from services.edge import create_app
from tests import browser
from tests.browser import NARROW, WIDE, Page
from tests.edge import KEYS, READ, WRITE, serve

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
RUNS = "/api/v1/workflows/order/runs"
STATES = "return Object.fromEntries([...document.querySelectorAll('svg.dag g.node')].map(g => [g.dataset.step, g.dataset.state]))"  # fmt: skip


class Order(msgspec.Struct):
    item: str = "book"
    fail: str = ""  # the step that fails for good, its error naming the item
    hold: bool = False  # `charge` waits until cancelled (or the test ends)
    notes: dict[str, str] = {}


class Task(msgspec.Struct):
    step: str
    item: str
    fail: bool
    hold: bool


class Done(msgspec.Struct):
    step: str
    item: str


def shop(release: asyncio.Event) -> App:
    """reserve -> charge -> (pack, invoice) -> ship, every step the action `do`."""
    app = App("shop")

    def task(name: str) -> Any:
        def make(ctx: RunContext[Order]) -> Task:
            order = ctx.input
            return Task(name, order.item, order.fail == name, order.hold and name == "charge")

        return make

    shape = {"reserve": (), "charge": ("reserve",), "pack": ("charge",),
             "invoice": ("charge",), "ship": ("pack", "invoice")}  # fmt: skip
    app.workflow(Workflow("order", Order, [Step(n, "do", d, task(n)) for n, d in shape.items()]))

    @app.action("do")
    async def do(task: Task) -> Done:
        if task.hold:
            await release.wait()
        if task.fail:
            raise PermanentError(f"{task.step} refused {task.item}")
        return Done(task.step, task.item)

    return app


@contextlib.asynccontextmanager
async def console(app: App, nats_url: str, chrome: Any, shots: Any) -> AsyncIterator[Page]:
    """`app`'s handlers and projections here, its edge under uvicorn, the shared browser."""
    async with run_app(app, nats_url):
        async for client in serve(create_app(app, nats_url, api_keys=KEYS)):
            opened = Page(chrome, str(client.base_url), shots)
            await opened.run(functools.partial(opened.size, WIDE))
            yield opened
            await opened.run(functools.partial(chrome.get, "about:blank"))  # its reads end first


@pytest.fixture
async def page(nats_url: str, chrome: Any, shots: Any) -> AsyncIterator[Page]:
    release = asyncio.Event()
    async with console(shop(release), nats_url, chrome, shots) as opened:
        try:
            yield opened
        finally:
            release.set()  # a held step returns before the worker stops


async def start(page: Page, headers: dict[str, str] = WRITE, **order: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=page.base) as http:
        return await http.post(RUNS, json=order, headers=headers)


async def runs(page: Page) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=page.base) as http:
        items: list[dict[str, Any]] = (await http.get(RUNS, headers=READ)).json()["items"]
        return items


async def finished(page: Page, count: int) -> None:
    """Until `count` runs have ended (polled with a deadline)."""
    async with asyncio.timeout(30):
        while True:
            if sum(r["status"] != "running" for r in await runs(page)) >= count:
                return
            await asyncio.sleep(0.1)


def run_page(page: Page, started: httpx.Response, key: str | None = "w-key") -> None:
    """The run's page, loaded afresh and logged in with `key` (None: in the same tab)."""
    body = started.json()
    route = f"workflows/order/runs/{body['run_id']}?after={body['seq']}"
    if key is None:
        page.go(route)
    else:
        page.open(route)
        page.login(key)
    page.until_text("Steps of the run")


async def test_definitions_then_a_run_from_the_form_turns_green(page: Page) -> None:
    def definitions() -> None:
        page.open("workflows")
        page.login("w-key")
        page.until_text("5 steps")
        assert page.js(STATES) == dict.fromkeys(["reserve", "charge", "pack", "invoice", "ship"], "definition")  # fmt: skip
        column = "return Object.fromEntries([...document.querySelectorAll('svg.dag g.node')].map(g => [g.dataset.step, +g.querySelector('rect').getAttribute('x')]))"  # fmt: skip
        x = page.js(column)
        assert x["reserve"] < x["charge"] < x["pack"] == x["invoice"] < x["ship"]
        assert len(page.all("svg.dag path.edge")) == 5
        page.shot("workflows")
        page.find("main a[href='#/workflows/order']").click()
        page.until(lambda: page.visible("#input-item"))
        page.shot("workflow-definition")

    await page.run(definitions)

    def refused_in_the_form() -> None:
        page.find("#input-notes").send_keys("{not json")
        page.button("Start run").click()
        page.until_text("Not JSON")
        page.find("#input-notes").clear()
        page.find("#input-notes").send_keys("[1, 2]")  # JSON, but not the type's
        page.button("Start run").click()
        page.until_text("422")
        page.find("#input-notes").clear()

    await page.run(refused_in_the_form)
    assert await runs(page) == []

    def started_from_the_form() -> None:
        page.find("#input-item").clear()
        page.find("#input-item").send_keys("lamp")
        page.button("Start run").click()
        page.until(lambda: "#/workflows/order/runs/order-" in page.driver.current_url)
        page.until_text("Ended: completed")
        assert set(page.js(STATES).values()) == {"completed"}
        fills = "return [...document.querySelectorAll('svg.dag g.node rect')].map(r => getComputedStyle(r).fill)"  # fmt: skip
        assert set(page.js(fills)) == {"rgb(227, 244, 232)"}  # --good-bg
        assert '"item": "lamp"' in page.text()
        assert page.all("main button[data-write]") == []  # an ended run has nothing to cancel
        page.shot("workflow-run-completed")
        page.find("main .toolbar a").click()
        page.until(lambda: page.all("main tbody tr"))
        page.find("main a[href='#/workflows/order?status=failed']").click()
        page.until_text("No failed runs")
        page.find("main a[href='#/workflows/order?status=completed']").click()
        page.until_text("5 of 5")

    await page.run(started_from_the_form)
    assert [r["input"]["item"] for r in await runs(page)] == ["lamp"]


async def test_a_failing_run_shows_failed_and_skipped_steps_with_hostile_text_as_text(
    page: Page,
) -> None:
    failing = await start(page, item=HOSTILE, fail="charge")
    assert failing.status_code == 201, failing.text

    def failed() -> None:
        run_page(page, failing)
        page.until_text("Ended: failed")
        assert page.js(STATES) == {"reserve": "completed", "charge": "failed", "pack": "skipped",
                                   "invoice": "skipped", "ship": "skipped"}  # fmt: skip
        assert f"PermanentError: charge refused {HOSTILE}" in page.text()
        assert page.text(".legend").split() == ["○", "pending", "▶", "running", "✓", "completed",
                                                "✗", "failed", "↷", "skipped", "⊘", "cancelled"]  # fmt: skip
        page.shot("workflow-run-failed")
        assert page.js("return window.__pwned") is None
        assert page.js("return document.querySelectorAll('img, main script').length") == 0

    await page.run(failed)
    for item in ("one", "two"):
        assert (await start(page, item=item)).status_code == 201
    await finished(page, 3)

    def paged_by_status() -> None:
        page.go("workflows/order?limit=1")
        page.until(lambda: len(page.all("main tbody tr")) == 1)
        shown = "return document.querySelector('main tbody a').textContent"  # the run id
        seen = [page.js(shown)]
        for _ in range(2):
            page.find("main a[rel=next]").click()
            page.until(lambda: page.js(shown) not in seen)
            seen.append(page.js(shown))
        assert page.all("main a[rel=next]") == []
        assert failing.json()["run_id"] in seen
        page.find("main .pager a").click()  # back to the first runs
        page.until(lambda: page.js(shown) == seen[0])
        page.go("workflows/order?status=failed&limit=1")
        page.until(lambda: page.js(shown) == failing.json()["run_id"])
        assert len(page.all("main tbody tr")) == 1
        page.shot("workflow-runs-failed")
        page.find("main a[rel=next]").click()  # the cursor may lead past the last match
        page.until_text("No failed runs on this page")
        page.go("workflows/order/runs/order-<img src=x onerror=window.__pwned=5>?after=x")
        page.until_text("400")
        page.go("workflows/<img src=x onerror=window.__pwned=6>")
        page.until_text("No workflow named <img")
        assert page.js("return window.__pwned") is None

    await page.run(paged_by_status)


async def test_cancel_a_running_run_after_confirming(page: Page) -> None:
    held = await start(page, hold=True)

    def cancel() -> None:
        run_page(page, held)
        page.until(lambda: page.js(STATES)["charge"] == "running")
        page.shot("workflow-run-running")
        page.button("Cancel run").click()
        page.confirm(yes=False)  # nothing happens
        assert page.js(STATES)["charge"] == "running"
        page.button("Cancel run").click()
        page.confirm()
        page.until_text("Ended: cancelled")
        assert page.js(STATES) == {"reserve": "completed", "charge": "cancelled", "pack": "cancelled",
                                   "invoice": "cancelled", "ship": "cancelled"}  # fmt: skip
        assert page.all("main button[data-write]") == []
        page.shot("workflow-run-cancelled")

    await page.run(cancel)
    assert [r["status"] for r in await runs(page)] == ["cancelled"]


async def test_a_read_only_key_sees_no_start_or_cancel_and_forged_ones_are_refused(
    page: Page,
) -> None:
    held = await start(page, hold=True)

    def read_only() -> None:
        page.open("workflows/order")
        page.login("r-key")
        page.until(lambda: page.all("main tbody tr"))
        assert "needs a key with the write scope" in page.text()
        assert page.all("#start-run") == []
        assert page.all("[data-write]") == []
        page.go("workflows")
        page.until_text("Runs of order")
        assert "Start a run" not in page.text()
        run_page(page, held, None)
        page.until(lambda: page.js(STATES)["charge"] == "running")
        assert page.all("[data-write]") == []
        page.shot("workflow-read-only")

    await page.run(read_only)
    forged = await start(page, READ, item="forged")
    assert forged.status_code == 403
    async with httpx.AsyncClient(base_url=page.base) as http:
        cancel = await http.post(f"{RUNS}/{held.json()['run_id']}:cancel", headers=READ)
    assert cancel.status_code == 403
    assert [r["status"] for r in await runs(page)] == ["running"]


async def test_narrow_window_and_axe_in_light_and_dark(page: Page) -> None:
    done = await start(page, item="checked")
    failing = await start(page, item="broken", fail="pack")
    await finished(page, 2)
    routes = (
        ("workflows", "5 steps"),
        ("workflows/order", "Start a run"),
        (f"workflows/order/runs/{done.json()['run_id']}", "Ended: completed"),
        (f"workflows/order/runs/{failing.json()['run_id']}", "Ended: failed"),
    )

    def audit() -> None:
        page.open()
        page.login("w-key")
        failures = page.audit(routes)
        page.shot("workflow-run-dark")
        page.size(NARROW)
        for route, needle in routes:
            page.go(route)
            page.until_text(needle)
            wide = page.js("return document.documentElement.scrollWidth")
            assert wide <= NARROW[0], f"#/{route} scrolls sideways"
        page.shot("workflow-run-narrow")
        page.js("localStorage.removeItem('bus.theme')")
        assert failures == {}

    await page.run(audit)
