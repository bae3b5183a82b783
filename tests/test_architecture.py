"""The arrows of the import graph, read from the code itself by scripts/imports.

The pure centre (the probe catalogue, the verdict, the DNS records, zones and
signatures) does no I/O, so it is tested with values and reused anywhere; the
receiver and the web app meet only in the store; a store backend stands alone.
A new arrow against these rules fails here, and so does a known one that is gone
(then it leaves KNOWN).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "imports"

# Pure: no I/O, and from the project only other pure modules (a pure module that
# imports an impure one does its I/O). `havedane.model` is issue 13's module of
# frozen values; the package roots only name the version and their submodules.
PURE = (
    "havedane.dns",
    "havedane.probes",
    "havedane.probeshape",
    "havedane.verdict",
    "havedane.diagnosis",
    "havedane.model",
    "havedane.wording",
    "havedane.wording_mx",
    "havedane.wiretext",
    "havedane.config_keys",
    "havedane.config_template",
    "havedane.dnstap_decode",
)
PURE_EXACT = ("havedane",)
# I/O by module, stdlib and third-party, matched with their submodules. dnspython is
# pure (records, zones, DNSSEC arithmetic) except the modules that send queries.
IO = (
    "socket", "ssl", "smtplib", "urllib", "http", "sqlite3", "subprocess", "asyncio", "os", "tempfile",
    "pathlib", "shutil", "signal", "select", "selectors", "socketserver", "threading", "multiprocessing",
    "aiosmtpd", "starlette", "uvicorn", "psycopg", "psycopg_pool", "httpx", "jinja2",
    "dns.query", "dns.asyncquery", "dns.resolver", "dns.asyncresolver",
)  # fmt: skip
# The receiver and the web app never import each other: they share only the store.
RECEIVER = (
    "havedane.receiver", "havedane.smtpserver", "havedane.admission", "havedane.tlspolicy", "havedane.connection"
)  # fmt: skip
WEB = ("havedane.web",)
# A backend is its module and the modules beside it named after it (`sqlite_writer`).
BACKENDS = ("havedane.store.sqlite", "havedane.store.postgres")

PURE_IMPORTS_IO = "a pure module imports an I/O module"
PURE_IMPORTS_IMPURE = "a pure module imports an impure havedane module"
RECEIVER_WEB = "the receiver and the web app import each other"
BACKEND_BACKEND = "a store backend imports another"

# Arrows that break the rules today, each to be removed by the change that ends it
# (issue 13). The test fails when one of them is gone, so this list stays true.
KNOWN: set[tuple[str, str, str]] = set()


def load_script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("havedane_imports_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


imports = load_script()


def within(name: str, groups: tuple[str, ...]) -> bool:
    return any(name == g or name.startswith(g + ".") for g in groups)


def backend(name: str) -> str | None:
    return next((b for b in BACKENDS if name == b or name.startswith((b + "_", b + "."))), None)


def pure(name: str) -> bool:
    return name in PURE_EXACT or within(name, PURE)


def violations(graph: dict[str, Any]) -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for mod in graph.values():
        if pure(mod.name):
            # Named by the I/O module matched: `pathlib` for `from pathlib import Path`.
            names = mod.external | mod.external_names
            found |= {(PURE_IMPORTS_IO, mod.name, io) for io in IO if any(within(n, (io,)) for n in names)}
            found |= {(PURE_IMPORTS_IMPURE, mod.name, n) for n in mod.project if not pure(n)}
        for this, other in ((RECEIVER, WEB), (WEB, RECEIVER)):
            if within(mod.name, this):
                found |= {(RECEIVER_WEB, mod.name, n) for n in mod.project if within(n, other)}
        if (mine := backend(mod.name)) is not None:
            found |= {(BACKEND_BACKEND, mod.name, n) for n in mod.project if backend(n) not in (None, mine)}
    return found


def test_the_import_graph_keeps_its_arrows() -> None:
    found = violations(imports.graph())
    assert found - KNOWN == set(), "new arrows against the rules"
    assert KNOWN - found == set(), "known arrows that are gone: remove them from KNOWN"


def test_the_pure_modules_are_the_ones_named() -> None:
    # A rule over modules that are not there proves nothing: the pure set is real.
    graph = imports.graph()
    assert {"havedane.dns.sign", "havedane.dns.tlsa", "havedane.dns.zone", "havedane.model", "havedane.probes"} <= {
        m for m in graph if pure(m)
    }
    assert "havedane.check" in graph and not pure("havedane.check")


def test_the_model_imports_nothing_of_the_project() -> None:
    # The values everyone shares: the verdict judges them, the store keeps them, both
    # import them from here (the store does not hand them on).
    graph = imports.graph()
    assert graph["havedane.model"].project == set()
    assert "havedane.model" in graph["havedane.verdict"].project
    assert not any(within(n, ("havedane.store",)) for n in graph["havedane.verdict"].project)


def test_imports_inside_functions_and_relative_ones_are_seen(tmp_path: Path) -> None:
    """A pure module that reaches I/O or the store from inside a function, or by a
    relative import, breaks the rules as much as one that does it at the top."""
    package = tmp_path / "havedane"
    (package / "dns").mkdir(parents=True)
    (package / "store").mkdir()
    for init in (package, package / "dns", package / "store"):
        (init / "__init__.py").write_text("")
    (package / "store" / "base.py").write_text("import sqlite3\n")
    (package / "receiver.py").write_text("def f():\n    from havedane.web import app\n")
    (package / "web" / "app.py").parent.mkdir()
    (package / "web" / "app.py").write_text("")
    (package / "dns" / "zone.py").write_text(
        "from __future__ import annotations\n"
        "from dns import query\n"
        "from . import tlsa\n"
        "def f():\n    import socket\n    from ..store import base\n"
    )
    (package / "dns" / "tlsa.py").write_text("class C:\n    def m(self):\n        from pathlib import Path\n")
    graph = imports.graph(tmp_path)
    assert graph["havedane.dns.zone"].project == {"havedane.dns.tlsa", "havedane.store.base"}
    assert violations(graph) == {
        (PURE_IMPORTS_IO, "havedane.dns.zone", "dns.query"),
        (PURE_IMPORTS_IO, "havedane.dns.zone", "socket"),
        (PURE_IMPORTS_IMPURE, "havedane.dns.zone", "havedane.store.base"),
        (PURE_IMPORTS_IO, "havedane.dns.tlsa", "pathlib"),
        (RECEIVER_WEB, "havedane.receiver", "havedane.web.app"),
    }


def test_a_backend_is_its_modules_and_no_other(tmp_path: Path) -> None:
    """A backend's own modules (`sqlite_writer`) may import each other, not another backend's."""
    store = tmp_path / "havedane" / "store"
    store.mkdir(parents=True)
    for init in (store.parent, store):
        (init / "__init__.py").write_text("")
    (store / "base.py").write_text("")
    (store / "sqlite_writer.py").write_text("from havedane.store import base\n")
    (store / "sqlite.py").write_text("from havedane.store import base, sqlite_writer\n")
    (store / "postgres_schema.py").write_text("from havedane.store.sqlite_writer import Writer\n")
    (store / "postgres.py").write_text("from havedane.store import postgres_schema\n")
    assert violations(imports.graph(tmp_path)) == {
        (BACKEND_BACKEND, "havedane.store.postgres_schema", "havedane.store.sqlite_writer")
    }
    real = {m for m in imports.graph() if m.startswith("havedane.store.")}
    assert {"havedane.store.sqlite_writer", "havedane.store.sqlite_schema"} <= {m for m in real if backend(m)}


def test_scripts_imports_prints_the_graph() -> None:
    proc = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60, check=True)
    lines = dict(line.split(" -> ") for line in proc.stdout.splitlines() if " -> " in line)
    # cli_ops imports check inside cmd_check: the graph has it all the same.
    assert "havedane.check" in lines["havedane.cli_ops"].split(", ")
    assert lines["havedane.dns.zone"].split(", ") == ["havedane.dns.sign", "havedane.dns.tlsa", "havedane.probes"]
