"""Install paths that work as written (issue 16): PostgreSQL as an extra, with a one-line
error when it is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
