from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from helpers import Serve, make_setup
from inprocess import App, InProcess, asgi_app


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def setup_dir(tmp_path: Path) -> Path:
    """A fresh copy of a `havedane init --domain x.test` setup; returns its config file."""
    return make_setup(tmp_path / "hd")


@pytest.fixture
def serve(setup_dir: Path) -> Iterator[InProcess]:
    """`havedane serve` in this process on ephemeral loopback ports (grace 2 s)."""
    server = InProcess(setup_dir, env={"HAVEDANE_VERDICT_GRACE": "2"}).start()
    yield server
    assert server.stop() == 0, "".join(server.output)


@pytest.fixture
def serve_process(setup_dir: Path) -> Iterator[Serve]:
    """A real `havedane serve` process on ephemeral loopback ports (grace 2 s): for the tests
    of what the process does (signals)."""
    server = Serve(setup_dir, env={"HAVEDANE_VERDICT_GRACE": "2"}).start()
    yield server
    server.stop()


@pytest.fixture
async def app(setup_dir: Path) -> AsyncIterator[App]:
    """The web app in the test's loop (ASGI transport) on the setup's real store (grace 2 s)."""
    async with asgi_app(setup_dir, {"HAVEDANE_VERDICT_GRACE": "2"}) as web:
        yield web
