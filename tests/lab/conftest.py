"""The lab fixture: one DANE world per test module, built only when a lab test runs.

Skipped only when not root and not in CI; in CI (CI=true) anything missing fails,
so the proof on real MTAs cannot silently stop running.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import world
from .postfix import MASTER

TOOLS = ("ip", "unshare", "script", "knotd", "unbound", "postfix", "postsuper", "posttls-finger")


def _missing() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, port 25, Postfix)"
    absent = [t for t in TOOLS if shutil.which(t) is None] + ([] if os.path.exists(MASTER) else [MASTER])
    if absent:
        return f"the lab needs {', '.join(absent)}: run scripts/system-packages"
    return None


@pytest.fixture(scope="module")
def lab() -> Iterator[world.World]:
    reason = _missing()
    if reason is not None:
        if os.geteuid() != 0 and os.environ.get("CI") != "true":
            pytest.skip(reason)
        pytest.fail(f"lab: {reason}", pytrace=False)
    # Not under pytest's tmp_path: its parent is 0700 and Postfix's daemons, running
    # as `postfix`, must reach their queue directories.
    directory = Path(tempfile.mkdtemp(prefix="havedane-lab-"))
    os.chmod(directory, 0o755)
    try:
        with world.build(directory) as w:
            yield w
    finally:
        if os.environ.get("HAVEDANE_LAB_KEEP") != "1":  # keep the logs for a look: HAVEDANE_LAB_KEEP=1
            shutil.rmtree(directory, ignore_errors=True)
