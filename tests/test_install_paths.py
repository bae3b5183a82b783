"""Install paths that work as written (issue 16): PostgreSQL as an extra, with a one-line
error when it is missing; a trial setup that only its user can read."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from havedane import cli_setup
from havedane import config as configmod
from havedane.model import Test
from havedane.store import open_store

# The test environment has psycopg (the `test` extra pulls it in), so its absence is
# simulated: a meta-path finder that refuses psycopg and psycopg_pool, inserted before
# havedane is imported, makes `import psycopg` fail exactly as it does when the package
# was never installed (ModuleNotFoundError naming the module).
WITHOUT_PSYCOPG = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("psycopg", "psycopg_pool", "psycopg_binary", "psycopg_c"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from havedane.cli import main
sys.exit(main())
"""


def without_psycopg(config: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HAVEDANE_STORE_URL": "postgresql://havedane@127.0.0.1:1/havedane"}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_PSYCOPG, *command, "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("command", [("serve",), ("db", "upgrade")])
def test_postgres_url_without_the_driver_names_the_extra(setup_dir: Path, command: tuple[str, ...]) -> None:
    r = without_psycopg(setup_dir, *command)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("havedane: ")
    assert "pip install 'havedane[postgres]'" in lines[0]
    assert r.stdout == ""


def test_the_blocker_is_what_fails(setup_dir: Path) -> None:
    """The simulation blocks psycopg and nothing else: SQLite still works under it."""
    r = subprocess.run(
        [sys.executable, "-c", WITHOUT_PSYCOPG, "db", "upgrade", "--config", str(setup_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "schema is current" in r.stdout


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_trial_setup_is_not_world_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`./scripts/serve` makes its trial in ~/.local/share/havedane: the folder is the user's
    alone, and the database (with its -wal and -shm) is too, under the usual umask 022."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    old = os.umask(0o022)
    try:
        path = cli_setup.embedded_config()

        async def write() -> None:
            store = open_store(configmod.load(path, env={}).store_url)
            await store.open()
            try:
                await store.create_test(Test("modes" + os.urandom(4).hex(), time.time(), "127.0.0.1"))
                db = path.parent / "havedane.sqlite3"
                for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                    assert mode(f) == 0o600, f"{f}: {oct(mode(f))}"
            finally:
                await store.close()

        asyncio.run(write())
    finally:
        os.umask(old)
    assert path.parent == tmp_path / "xdg" / "havedane"
    assert mode(path.parent) == 0o700
    assert mode(path.parent / "tls") == 0o700


def test_an_older_trial_folder_is_made_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial made by an earlier havedane (folder 0755) is closed on the next `serve`."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    path = cli_setup.embedded_config()
    path.parent.chmod(0o755)
    assert cli_setup.embedded_config() == path
    assert mode(path.parent) == 0o700
