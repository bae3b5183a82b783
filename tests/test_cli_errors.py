"""A newcomer's mistakes, made with the real `havedane` command: one line naming the
thing, exit 2 (usage or configuration, as the README says), never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from helpers import make_setup


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `havedane init` shared by every case (no case writes into it)."""
    return make_setup(tmp_path_factory.mktemp("base"))


def no_write_permission() -> list[str]:
    """A prefix that runs the command without permission to write into a 0555
    directory. Root ignores file modes through CAP_DAC_OVERRIDE, so as root the
    command runs with that capability (and CAP_DAC_READ_SEARCH) dropped."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    return [shutil.which("setpriv") or "setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]


def config_with(base: Path, tmp: Path, old: str, new: str) -> Path:
    text = base.read_text()
    assert old in text, old
    text = text.replace(old, new).replace('dir = "tls"', f'dir = "{base.parent / "tls"}"')
    path = tmp / "havedane.toml"
    path.write_text(text)
    return path


# (id, argv, extra environment, (old, new) edit of the config, what stderr must name)
CASES = [
    ("init-dir-proc", ["init", "--domain", "x.test", "--dir", "/proc/x"], {}, None, "--dir"),
    ("init-dir-file", ["init", "--domain", "x.test", "--dir", "{tmp}/afile"], {}, None, "--dir"),
    ("init-dir-no-permission", ["init", "--domain", "x.test", "--dir", "{tmp}/ro/sub"], {}, None, "--dir"),
    ("init-domain-ip", ["init", "--domain", "1.2.3.4", "--dir", "{tmp}/new"], {}, None, "--domain"),
    ("init-domain-hyphen", ["init", "--domain=-foo.example", "--dir", "{tmp}/new"], {}, None, "--domain"),
    ("zone-out-missing-dir", ["zone", "--out", "{tmp}/missing/z.zone"], {}, None, "--out"),
    ("zone-out-directory", ["zone", "--out", "{tmp}"], {}, None, "--out"),
    (
        "zone-knot-missing-dir",
        ["zone", "--out", "{tmp}/z.zone", "--knot-conf", "{tmp}/missing/k.conf"],
        {},
        None,
        "--knot-conf",
    ),  # fmt: skip
    ("zone-knot-without-out", ["zone", "--knot-conf", "{tmp}/knot.conf"], {}, None, "--knot-conf"),
    ("check-resolver-name", ["check", "--resolver", "resolver.example"], {}, None, "--resolver"),
    ("check-port", ["check", "--smtp-port", "70000"], {}, None, "--smtp-port"),
    (
        "deliver-client-address",
        ["deliver", "--sender", "a@b.example", "--recipient", "a@do.x.test", "--client-address", "notanip"],
        {},
        None,
        "--client-address",
    ),  # fmt: skip
    ("postfix-user", ["postfix-config", "--user", "bad user"], {}, None, "--user"),
    ("unknown-env", ["records"], {"HAVEDANE_VERDICT_GRCE": "5"}, None, "HAVEDANE_VERDICT_GRCE"),
    ("serve-no-certificates", ["serve"], {}, ('dir = "tls"', 'dir = "{tmp}/none"'), "certificates missing"),
    ("smtp-timeout-0", ["records"], {}, ("timeout = 300", "timeout = 0"), "smtp.timeout"),
    ("retention-days-0", ["records"], {}, ("days = 7", "days = 0"), "retention.days"),
    ("smtp-listen-empty", ["records"], {}, ('listen = ["127.0.0.1:2525"]', "listen = []"), "smtp.listen"),
    (
        "probes-none-with-matrix",
        ["records"],
        {},
        ("matrix = false", 'matrix = true\naddresses = { notls = "192.0.2.8", "unusable-notls" = "192.0.2.9" }'),
        "probes.enabled",
    ),  # fmt: skip
]


@pytest.mark.parametrize("argv,env,edit,names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistake_is_one_line_exit_2(
    base: Path, tmp_path: Path, argv: list[str], env: dict[str, str], edit: tuple[str, str] | None, names: str
) -> None:
    (tmp_path / "afile").write_text("")
    (tmp_path / "ro").mkdir(mode=0o555)
    prefix = no_write_permission() if "{tmp}/ro/sub" in argv else []
    cfg = base
    if edit is not None:
        old, new = edit
        if names == "probes.enabled":  # no probe at all, only the matrix (whose probes are not classic)
            old, new = 'enabled = ["do", "dont", "wrong"]\nmatrix = false', "enabled = []\n" + new
        cfg = config_with(base, tmp_path, old, new.replace("{tmp}", str(tmp_path)))
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if args[0] != "init":
        args[1:1] = ["--config", str(cfg)]
    try:
        r = subprocess.run(
            [*prefix, sys.executable, "-m", "havedane", *args], capture_output=True, text=True,
            env={**os.environ, **env}, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"havedane {' '.join(args)} was not refused: still running after 30 s")
    assert "Traceback" not in r.stderr
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert names in lines[0]
    assert not (tmp_path / "new").exists(), "a refused init wrote something"
    assert not (tmp_path / "z.zone").exists(), "a refused zone wrote something"


def test_init_uses_the_a_label_of_an_international_domain(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "havedane", "init", "--domain", "bücher.example", "--dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert 'domain = "xn--bcher-kva.example"' in (tmp_path / "d" / "havedane.toml").read_text()
    leaf = x509.load_pem_x509_certificate((tmp_path / "d" / "tls" / "leaf-ecdsa.pem").read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "*.do.xn--bcher-kva.example" in names.get_values_for_type(x509.DNSName)
