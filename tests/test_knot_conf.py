"""`havedane zone --sign --knot-conf`: the sample Knot configuration is valid for Knot
and serves the parent and child zones as written (knotd on loopback, kdig)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from helpers import free_port, require


def test_knot_serves_the_matrix_zones_as_written(tmp_path: Path) -> None:
    knotd, knotc, kdig = require("knotd"), require("knotc"), require("kdig")
    env = {**os.environ, "HAVEDANE_PROBES_MATRIX": "true",
           "HAVEDANE_PROBES_ADDRESSES": "notls=192.0.2.8,unusable-notls=192.0.2.9"}  # fmt: skip
    run = [sys.executable, "-m", "havedane"]
    subprocess.run([*run, "init", "--domain", "x.test", "--dir", str(tmp_path)], check=True, env=env, timeout=60)
    out = subprocess.run(
        [*run, "zone", "--config", str(tmp_path / "havedane.toml"), "--sign", "--address", "192.0.2.7",
         "--out", str(tmp_path / "x.test.zone"), "--knot-conf", str(tmp_path / "knot.conf")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "bogus.x.test.zone").exists() and (tmp_path / "unsigned.x.test.zone").exists()
    conf = (tmp_path / "knot.conf").read_text()
    port = free_port()
    # The sample listens on all addresses at 53; here: loopback, a free port, a run directory.
    conf = conf.replace("listen: 0.0.0.0@53", f'listen: 127.0.0.1@{port}\n    rundir: "{tmp_path}"')
    conf = conf.replace("template:\n  - id: default\n", f'template:\n  - id: default\n    storage: "{tmp_path}"\n')
    (tmp_path / "knot.conf").write_text(conf + f'database:\n    storage: "{tmp_path}"\n')
    check = subprocess.run([knotc, "-c", str(tmp_path / "knot.conf"), "conf-check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen([knotd, "-c", str(tmp_path / "knot.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:

        def dig(*args: str) -> str:
            r = subprocess.run([kdig, "-p", str(port), "@127.0.0.1", "+dnssec", "+timeout=1", "+retry=0", *args],
                               capture_output=True, text=True, timeout=10)  # fmt: skip
            return r.stdout

        deadline = time.monotonic() + 15
        while "bogus.x.test" not in dig("SOA", "bogus.x.test") or "RRSIG" not in dig("SOA", "x.test"):
            assert time.monotonic() < deadline, "knotd did not serve the zones"
            time.sleep(0.2)
        assert "RRSIG" in dig("TLSA", "_25._tcp.do.x.test")  # the parent, signed by havedane
        assert "TLSA" in dig("TLSA", "_25._tcp.bogus.x.test")  # served although its signature is broken
        assert "RRSIG" not in dig("TLSA", "_25._tcp.unsigned.x.test")  # the unsigned child
        has_ds = re.compile(r"^bogus\.x\.test\.\s+\d+\s+IN\s+DS\s", re.M)
        assert has_ds.search(dig("DS", "bogus.x.test"))
        no_ds = dig("DS", "unsigned.x.test")
        assert not re.search(r"^unsigned\.x\.test\.\s+\d+\s+IN\s+DS\s", no_ds, re.M)
        assert re.search(r"^unsigned\.x\.test\.\s+\d+\s+IN\s+NSEC\s", no_ds, re.M)  # proof of no DS (insecure)
    finally:
        proc.terminate()
        proc.wait(10)
