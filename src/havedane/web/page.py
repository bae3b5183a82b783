"""The result page's templates: the Jinja environment, its filters and the helpers it calls.

What the page shows is laid out from the report's JSON by web.view (the probe cards and
the summary), web.timeline and web.conformance; the templates call them by the names
registered here. Every string from the network (HELO, MAIL FROM, SNI, addresses) reaches
the templates as a plain value and is escaped by Jinja (autoescape), never joined into
markup; `breakable` adds only <wbr> between escaped parts.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import jinja2
import markupsafe

from havedane import probes, report
from havedane.config import Config
from havedane.web import view
from havedane.web.conformance import conformance, grade_rows
from havedane.web.timeline import timeline

HERE = Path(__file__).parent
NOSCRIPT_REFRESH = 15  # seconds: a pending page without JavaScript reloads itself this often


def when(iso: str | None) -> str:
    """Server-side rendering of a time (the page's script shows it in local time)."""
    if iso is None:
        return ""
    return datetime.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(iso: str | None) -> str:
    if iso is None:
        return ""
    return datetime.datetime.fromisoformat(iso).strftime("%H:%M:%S")


def breakable(text: str) -> markupsafe.Markup:
    """A host name or address that may break after its dots and its @, never inside a label:
    escaped parts joined by <wbr> (CSS keeps `overflow-wrap: normal` on them)."""
    parts = [part for part in re.split(r"(?<=[.@])", text) if part]
    return markupsafe.Markup("<wbr>").join(markupsafe.Markup("<span>%s</span>") % part for part in parts)


def static_url() -> Callable[[str], str]:
    """`static("app.js")` -> "/static/app.js?v=<digest>": a changed file gets a new URL, so no stale cache."""
    versions = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:10] for f in (HERE / "static").iterdir() if f.is_file()
    }

    def static(name: str) -> str:
        return f"/static/{name}?v={versions[name]}"

    return static


def environment(config: Config) -> jinja2.Environment:
    """The templates, with autoescaping on, the view model's helpers and the filters above."""
    # auto_reload off: otherwise every render stats each template file (a fifth of a page's
    # build in the issue 12 profile); templates change only with a new release.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True,
        auto_reload=False,
    )  # fmt: skip
    env.globals.update(
        advice=lambda name: probes.CATALOGUE[name].advice if name in probes.CATALOGUE else "",
        probe_state=view.probe_state,
        refusals=view.refusals,
        other_sessions=view.other_sessions,
        facts=view.facts,
        timeline=timeline,
        refuse_hosts=view.refuse_hosts,
        held_hosts=view.held_hosts,
        grade_rows=grade_rows,
        conformance=conformance,
        missing_hosts=view.missing_hosts,
        classic=view.classic,
        matrix=view.matrix,
        dane_host=view.dane_host,
        join_names=view.join_names,
        outcomes=view.OUTCOMES,
        session_words=view.session_words,
        grace=config.grace,
        expect_words=view.EXPECT_WORDS,
        noscript_refresh=NOSCRIPT_REFRESH,
        domain=config.domain,
        probes=config.probes,
        static=static_url(),
    )
    env.filters.update(when=when, clock=clock, iso=report.iso, breakable=breakable)
    return env
