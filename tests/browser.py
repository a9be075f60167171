"""Debian's chromium, headless, driven by Selenium through Debian's chromedriver, for the
console's tests. Selenium blocks: where the edge under test serves on the test's event loop
(not a `bus up` process), every browser step runs in a thread (`Page.run`)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from axe_selenium_python import Axe
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WIDE, NARROW = (1280, 900), (420, 900)
T = TypeVar("T")


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} is missing: apt-get install {package} (.ci/run installs it)"
    return None


def chromium() -> Iterator[webdriver.Chrome]:
    """One headless chromium with a fresh profile, quit at the end."""
    profile = tempfile.mkdtemp(prefix="bus-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDE[0]},{WIDE[1]}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """The console in the shared browser, at one edge's base URL."""

    def __init__(self, driver: webdriver.Chrome, base: str, shots: Path) -> None:
        self.driver, self.base, self.shots = driver, base.rstrip("/"), shots

    async def run(self, step: Callable[[], T]) -> T:
        return await asyncio.to_thread(step)

    # -- the blocking steps ------------------------------------------------------------------

    def open(self, route: str = "") -> None:
        """Load the console at `#/route` (a full load: the page starts afresh)."""
        self.driver.get(f"{self.base}/ui/#/{route}")
        self.until(lambda: self.js("return document.readyState") == "complete")

    def go(self, route: str) -> None:
        """Navigate inside the loaded console (its router, not a reload)."""
        self.js("location.hash = arguments[0]", f"#/{route}")

    def login(self, key: str) -> None:
        self.until(lambda: self.visible("#login"))
        field = self.find("#login-key")
        field.clear()
        field.send_keys(key)
        self.find("#login-form button[type=submit]").click()

    def reload_until(self, condition: Callable[[], object], timeout: float = 60.0) -> None:
        """Reload the page (pages that do not refresh themselves) until `condition` holds."""

        def reloaded() -> object:
            self.driver.refresh()
            try:
                return WebDriverWait(self.driver, 1, poll_frequency=0.05).until(
                    lambda _: condition()
                )
            except WebDriverException:
                return False

        WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(lambda _: reloaded())

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def until(self, condition: Callable[[], object], timeout: float = 20.0) -> Any:
        def check(_: object) -> object:
            try:
                return condition()
            except WebDriverException:
                return False

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(check)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def visible(self, css: str) -> bool:
        found = self.all(css)
        return bool(found) and found[0].is_displayed()

    def text(self, css: str = "main") -> str:
        return str(self.js("return document.querySelector(arguments[0])?.innerText ?? ''", css))

    def until_text(self, needle: str, css: str = "main", timeout: float = 20.0) -> None:
        try:
            self.until(lambda: needle in self.text(css), timeout)
        except Exception as exc:
            raise AssertionError(f"{needle!r} not in {css}: {self.text(css)[:2000]!r}") from exc

    def button(self, label: str) -> WebElement:
        """The button whose text or aria-label is `label`."""
        found = [
            b
            for b in self.all("button")
            if label in (b.text, b.get_attribute("aria-label")) and b.is_displayed()
        ]
        assert found, f"no button {label!r}"
        return found[0]

    def confirm(self, yes: bool = True) -> None:
        self.until(lambda: self.visible("#confirm"))
        self.find("#confirm-ok" if yes else "#confirm button[value=cancel]").click()
        self.until(lambda: not self.visible("#confirm"))

    def size(self, width_height: tuple[int, int]) -> None:
        self.driver.set_window_size(*width_height)

    def accessibility(self) -> list[dict[str, Any]]:
        """axe-core's serious and critical violations on the page as it is."""
        axe = Axe(self.driver)
        axe.inject()
        results = axe.run()
        assert results["passes"], "axe checked nothing"
        return [v for v in results["violations"] if v["impact"] in ("serious", "critical")]

    def audit(self, routes: tuple[tuple[str, str], ...]) -> dict[str, list[tuple[str, str]]]:
        """axe-core's serious and critical findings on each route (shown once `needle` is on
        the page), in the light theme and in the dark one, by "theme #/route"."""
        failures = {}
        for theme in ("light", "dark"):
            if self.js("return document.documentElement.dataset.theme") != theme:
                self.find("#theme").click()
            for route, needle in routes:
                self.go(route)
                self.until_text(needle)
                if found := self.accessibility():
                    failures[f"{theme} #/{route}"] = [(v["id"], v["help"]) for v in found]
        return failures

    def shot(self, name: str) -> None:
        """A screenshot, kept as a test artifact."""
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))
