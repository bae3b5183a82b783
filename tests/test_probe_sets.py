"""Probe sets that cannot give a verdict are refused at start; every set that starts
answers every page without a 500 (through the web app of a real `havedane serve`)."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from helpers import Serve, send

MATRIX = {"HAVEDANE_PROBES_MATRIX": "true", "HAVEDANE_PROBES_ADDRESSES": "notls=127.0.0.8,unusable-notls=127.0.0.9"}


def status(server: Serve, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.web_port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status


@pytest.mark.parametrize("enabled", ["", "do,dont", "wrong"])
def test_set_without_verdict_is_refused_at_start(setup_dir: Path, enabled: str) -> None:
    server = Serve(setup_dir, env={**MATRIX, "HAVEDANE_PROBES_ENABLED": enabled})
    try:
        with pytest.raises(RuntimeError) as e:
            server.start(timeout=15)
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 2
    lines = "".join(server.output).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("havedane: config: probes.enabled: no verdict"), e.value


def test_smallest_set_with_the_matrix_answers_every_page(setup_dir: Path) -> None:
    # One must-deliver and one must-refuse classic probe, and the whole matrix.
    server = Serve(setup_dir, env={**MATRIX, "HAVEDANE_PROBES_ENABLED": "dont,wrong", "HAVEDANE_VERDICT_GRACE": "1"})
    server.start()
    try:
        alias = server.new_test()["alias"]
        for path in (f"/api/tests/{alias}", f"/t/{alias}", "/"):
            assert status(server, path) == 200, path
        assert server.result(alias)["verdict"]["code"] == "pending"
        assert send(server.smtp_port, [f"test@{alias}.dont.x.test"], sni=f"{alias}.dont.x.test") == {}
        body = server.wait_for(alias, lambda b: b["verdict"]["code"] == "validates", timeout=10)
        assert body["probes"]["wrong"]["status"] == "not-delivered"
        for path in (f"/api/tests/{alias}", f"/t/{alias}", "/"):
            assert status(server, path) == 200, path
    finally:
        server.stop()
