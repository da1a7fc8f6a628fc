"""A real headless browser for the console's tests: Debian's chromium,
driven through its chromedriver by Selenium.

Selenium's calls block; the server under test runs on the test's event
loop. So every call goes to a thread (``asyncio.to_thread``) while the loop
keeps serving, and waits are Selenium's own (``WebDriverWait`` polling the
page) rather than sleeps.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from typing import TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = "the console's browser tests need Debian's chromium and chromium-driver: run `make browser` (apt-get)"


def start_chromium(*, width: int = 1280, height: int = 900) -> webdriver.Chrome:
    driver_path = shutil.which("chromedriver") or CHROMEDRIVER
    if not shutil.which(driver_path):
        raise RuntimeError(INSTALL_HINT)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the suite may run as root, where chromium's sandbox will not start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver_path))


class Browser:
    """One browser, used from async tests against ``base`` (``http://host:port``)."""

    def __init__(self, driver: webdriver.Chrome, base: str = "") -> None:
        self.driver = driver
        self.base = base

    async def run(self, call: Callable[[], T]) -> T:
        return await asyncio.to_thread(call)

    async def get(self, path: str) -> None:
        await self.run(lambda: self.driver.get(self.base + path))

    async def path(self) -> str:
        url = await self.run(lambda: self.driver.current_url)
        return url.removeprefix(self.base).split("?")[0]

    async def find(self, css: str) -> WebElement:
        return await self.run(lambda: self.driver.find_element(By.CSS_SELECTOR, css))

    async def find_all(self, css: str) -> list[WebElement]:
        return await self.run(lambda: self.driver.find_elements(By.CSS_SELECTOR, css))

    async def text(self, css: str) -> str:
        return await self.run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).text)

    async def texts(self, css: str) -> list[str]:
        return await self.run(lambda: [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, css)])

    async def type_into(self, css: str, text: str, *, submit: bool = True) -> None:
        def typing() -> None:
            field = self.driver.find_element(By.CSS_SELECTOR, css)
            field.clear()
            field.send_keys(text)
            if submit:
                field.submit()

        await self.run(typing)

    async def click(self, css: str) -> None:
        await self.run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def click_when_there(self, css: str, *, within: float = 20.0) -> None:
        """Click ``css`` on a page that reloads itself: a click that met the
        page between two loads is tried again."""

        def clicked(driver: webdriver.Chrome) -> bool:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return True

        await self.wait_until(clicked, within=within, what=f"a click on {css}")

    async def wait_until(
        self, check: Callable[[webdriver.Chrome], object], *, within: float = 20.0, what: str = ""
    ) -> None:
        """Until ``check(driver)`` is truthy (exceptions count as not yet)."""

        def waiting() -> None:
            WebDriverWait(self.driver, within, poll_frequency=0.1, ignored_exceptions=(Exception,)).until(
                check, message=what
            )

        await self.run(waiting)

    async def wait_for_text(self, css: str, wanted: str, *, within: float = 20.0) -> None:
        await self.wait_until(
            lambda d: wanted in d.find_element(By.CSS_SELECTOR, css).text,
            within=within,
            what=f"{wanted!r} in {css}",
        )

    async def log_in(self, credential: str) -> None:
        await self.get("/login")
        await self.type_into("input[name=credential]", credential)
        await self.wait_until(lambda d: "/login" not in d.current_url, what="the login to go through")

    async def log_out(self) -> None:
        await self.run(self.driver.delete_all_cookies)
