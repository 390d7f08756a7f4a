"""Shared by the browser tests: Debian's Chromium driven by playwright, and the history server in-process.

Never `playwright install`: the browser is the system's /usr/bin/chromium. Screenshots go to
test-output/screenshots/ (TEST_OUTPUT) for a person to look at; a failed step leaves FAILED-<name>.png.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

from rayhistory.server.main import Settings, serve
from tests.backends import require_tool
from tests.conftest import TEST_OUTPUT, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = TEST_OUTPUT / "screenshots"
# Generous: the dashboard polls and renders on a 2-core machine shared with other work.
UI_TIMEOUT_MS = 30_000


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.asynccontextmanager
async def running_server(store_url: str, **extra):
    """`rayhistory server` (its real serve()) on free ports of 127.0.0.1; yields the public base URL.
    `extra` overrides Settings fields (auth="kubernetes", ...)."""
    settings = Settings(storage=store_url, host="127.0.0.1", port=free_port(), internal_port=free_port(),
                        prewarm_token="browser-tests", log_format="text", **extra)
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, stop))
    base = f"http://127.0.0.1:{settings.port}/"
    try:
        for _ in range(200):
            if server.done():
                server.result()  # raises what stopped it
            if await asyncio.to_thread(http_ok, base + "healthz"):  # open even with --auth kubernetes
                break
            await asyncio.sleep(0.05)
        yield base
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


@contextlib.asynccontextmanager
async def chromium(profile: Path, extra_args: Sequence[str] = ()):
    """A Chromium context of its own profile; `extra_args` add to CHROMIUM_ARGS (a host resolver rule, a pin)."""
    require_tool(CHROMIUM, "apt-get install chromium (Debian's; playwright's own browsers are never downloaded)")
    from playwright.async_api import async_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, *extra_args],
            viewport={"width": 1440, "height": 900}, accept_downloads=True, timezone_id="UTC",
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
async def browser(tmp_path):
    async with chromium(tmp_path / "chromium-profile") as context:
        yield context


def session_url(base: str, ref) -> str:
    return f"{base}s/{ref.namespace}/{ref.cluster}/{ref.session}/"


@contextlib.asynccontextmanager
async def screenshot_on_failure(page, name: str):
    """What the browser showed when a step failed: the first thing to look at in CI's test output."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            await page.screenshot(path=str(SCREENSHOTS / f"FAILED-{name}.png"))
        raise


async def shot(page, name: str) -> None:
    await page.wait_for_load_state("networkidle")
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


async def show_failed_task(page, task_text: str):
    """On a job's page: its task table filtered to FAILED, scrolled to the row with `task_text` (returned)."""
    await page.get_by_text("Task Table").first.click()
    await page.get_by_label("State").first.fill("FAILED")
    row = page.locator("tr", has_text=task_text).first
    await row.wait_for()
    assert "FAILED" in await row.inner_text()
    await page.keyboard.press("Escape")  # close the filter's dropdown before the picture
    await row.scroll_into_view_if_needed()
    return row
