"""The service's counters for Prometheus (`GET /metrics`, served by web.app to `[web] metrics_from`).

One `Metrics` per `havedane serve` process, each with a registry of its own rather than
prometheus_client's global one: the tests run several receivers and apps in one
interpreter, and the global registry refuses a name registered twice (and would mix
their counts). The counters count what this process did; the parts a process does not
run (`serve --role web` runs no receiver) are not exposed, rather than shown at zero.

Limit hits are named by the configuration key whose bound refused (`max_recipients`,
`tests_per_minute`, …): the README's table says what each one answers.

Verdicts are computed when a result is read, never stored, and can still change after
the grace period (a late delivery of a must-refuse probe), so no moment makes one final.
`havedane_verdicts_total` therefore counts what this process saw: a test counts once
under each decided code (not `pending`) that it is seen to reach when its result is
built (the API, the page, a live page), remembered for the last VERDICTS_KEPT tests.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from havedane.model import Delivery, Session
from havedane.verdict import Code

if TYPE_CHECKING:
    from havedane.dnstap import Counts

# The classic text format (0.0.4), which prometheus_client writes with its default escaping;
# newer releases announce `version=1.0.0`, which Prometheus before 3.0 does not know.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

SMTP_LIMITS = (
    "max_connections",
    "max_connections_per_client",
    "max_recipients",
    "max_messages_per_connection",
    "max_message_size",
    "max_deliveries_per_probe",
    "max_sessions_per_test",
)
WEB_LIMITS = ("tests_per_minute", "tests_per_minute_total", "max_tests", "max_streams", "max_streams_per_client")
PARTS = frozenset({"smtp", "web"})
VERDICTS_KEPT = 10_000  # tests whose last counted code is remembered; one read again later may count again
# Seconds: a SQLite group commit takes milliseconds; [store] write_timeout (30 s) ends the scale.
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

T = TypeVar("T")


class Metrics:
    """The counters of one process; `parts` are those it runs and exposes ("smtp", "web")."""

    def __init__(self, parts: Iterable[str] = PARTS) -> None:
        self.registry = CollectorRegistry()
        parts = frozenset(parts)
        smtp = self.registry if "smtp" in parts else None  # None: counted, never exposed
        web = self.registry if "web" in parts else None
        self.tests_created = Counter("havedane_tests_created", "Tests created", registry=web)
        self.deliveries = Counter(
            "havedane_deliveries", "Deliveries recorded, by probe and whether over TLS", ["probe", "tls"], registry=smtp
        )
        self.sessions = Counter(
            "havedane_sessions", "SMTP sessions ended, by probe (none: no probe named) and outcome",
            ["probe", "outcome"], registry=smtp,
        )  # fmt: skip
        self.verdicts = Counter(
            "havedane_verdicts", "Tests seen reaching a decided verdict, once per test and code", ["code"], registry=web
        )
        self.limit_hits = Counter(
            "havedane_limit_hits", "Requests refused by a limit, by the configuration key that set it", ["kind"],
            registry=self.registry,
        )  # fmt: skip
        self.store_writes = Histogram(
            "havedane_store_write_seconds", "Time from a store write's call to its commit (or failure), by operation",
            ["operation"], buckets=WRITE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.streams_open = Gauge("havedane_event_streams_open", "Live pages (SSE streams) open", registry=web)
        for kind in (SMTP_LIMITS if smtp else ()) + (WEB_LIMITS if web else ()):
            self.limit_hits.labels(kind)  # every kind shown from the start, at 0
        for code in Code:
            if code is not Code.PENDING:
                self.verdicts.labels(code.value)
        for standard in (ProcessCollector, PlatformCollector, GCCollector):
            standard(registry=self.registry)
        self._codes: collections.OrderedDict[str, str] = collections.OrderedDict()

    def refused(self, kind: str, answer: T) -> T:
        """`answer` (the refusal), counted as a hit of the limit `kind`."""
        self.limit_hits.labels(kind).inc()
        return answer

    @contextlib.contextmanager
    def writing(self, operation: str) -> Iterator[None]:
        """Times a store write, whether it commits or fails (a write that gives up after
        `[store] write_timeout` shows as such)."""
        with self.store_writes.labels(operation).time():
            yield

    def delivered(self, deliveries: Iterable[Delivery]) -> None:
        for d in deliveries:
            self.deliveries.labels(d.probe, "yes" if d.tls is not None else "no").inc()

    def session(self, session: Session) -> None:
        self.sessions.labels(session.probe or "none", session.outcome.value).inc()

    def verdict(self, alias: str, code: str) -> None:
        """A test's result was built with verdict `code`: counted when the test reaches it."""
        if code == Code.PENDING or self._codes.get(alias) == code:
            return
        self._codes[alias] = code
        self._codes.move_to_end(alias)
        while len(self._codes) > VERDICTS_KEPT:
            self._codes.popitem(last=False)
        self.verdicts.labels(code).inc()

    def streams(self, count: Callable[[], float]) -> None:
        """The open live pages are read from `count` at each scrape."""
        self.streams_open.set_function(count)

    def dnstap(self, counts: Counts) -> None:
        """The dnstap reader's counts (dnstap.Counts), read at each scrape."""
        self.registry.register(DnstapCollector(counts))


class DnstapCollector(Collector):
    """What the dnstap reader counts: frames from Knot and the DNS queries made of them."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        c = self.counts
        yield CounterMetricFamily("havedane_dnstap_connections", "Frame Streams connections from Knot", c.connections)
        yield CounterMetricFamily("havedane_dnstap_frames", "dnstap data frames read", c.frames)
        yield CounterMetricFamily(
            "havedane_dnstap_malformed_frames", "dnstap frames that could not be read", c.malformed
        )
        queries = CounterMetricFamily(
            "havedane_dnstap_queries",
            "DNS queries read: stored, outside the zone (not stored), dropped ([dns] bounds, or the store failing)",
            labels=["result"],
        )
        for result, value in (("stored", c.stored), ("outside", c.outside), ("dropped", c.dropped)):
            queries.add_metric([result], value)
        yield queries
