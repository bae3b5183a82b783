"""Fixtures for the browser tests: one `havedane serve` per session, Debian's Chromium.

Without Chromium the tests are skipped locally; in CI (CI=true) that is a failure:
scripts/system-packages installs it there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from helpers import set_up

from .browser_harness import CHROMIUM, CHROMIUM_ARGS, SERVER_ENV, Server, Watch, chromium_path, new_page

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="package")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    if chromium_path() is None:
        reason = f"no Chromium at {CHROMIUM} (scripts/system-packages installs it)"
        if in_ci():
            pytest.fail(f"browser tests cannot run in CI: {reason}")
        pytest.skip(reason)
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    path = chromium_path()
    assert path is not None
    browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[Server]:
    srv = Server(set_up(tmp_path_factory.mktemp("havedane") / "setup"), SERVER_ENV).start()
    yield srv
    srv.stop()


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def page(browser: Browser, watch: Watch) -> Iterator[Page]:
    context, page = new_page(browser, watch, viewport={"width": 1200, "height": 900})
    yield page
    context.close()
    # No script errors, no CSP violations, no dialogs on any page of any test.
    assert watch.errors == [], watch.errors
    assert watch.dialogs == [], watch.dialogs
    assert not [m for m in watch.console if m.startswith("error")], watch.console
