"""Configuration: defaults, environment overrides, one-line errors naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from havedane import config, probes


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "havedane.toml"
    p.write_text(text)
    return p


def test_defaults(tmp_path: Path) -> None:
    c = config.load(write(tmp_path, 'domain = "x.test"\n'), env={})
    assert c.domain == "x.test"
    assert [p.name for p in c.probes] == ["do", "dont", "wrong"]
    assert c.grace == 60
    assert c.smtp_listen == (config.Listen("127.0.0.1", 2525),)
    assert c.store_url == f"sqlite:///{tmp_path / 'havedane.sqlite3'}"
    assert c.tls_dir == tmp_path / "tls"


def test_rendered_file_loads_with_every_key(tmp_path: Path) -> None:
    c = config.load(write(tmp_path, config.render("x.test", ["127.0.0.1:25", "[::1]:25"], "127.0.0.1:80")), env={})
    assert c.smtp_listen == (config.Listen("127.0.0.1", 25), config.Listen("::1", 25))
    assert c.web_listen == config.Listen("127.0.0.1", 80)


def test_rendered_file_names_the_probes_of_the_catalogue(tmp_path: Path) -> None:
    """The template's probe lists come from the catalogue: every probe is named, and its
    example of listener addresses, uncommented with the matrix on, is a working setup."""
    text = config.render("x.test", ["127.0.0.1:25"], "127.0.0.1:80")
    section = text[text.index("[probes]") : text.index("[smtp]")]
    assert set(probes.CATALOGUE) - set(re.findall(r"[\w-]+", section)) == set()
    (example,) = [line for line in text.splitlines() if line.startswith("# addresses = ")]
    text = text.replace(example, example.removeprefix("# ")).replace("matrix = false", "matrix = true")
    c = config.load(write(tmp_path, text), env={})
    assert [p.name for p in c.probes] == list(probes.CATALOGUE)
    assert set(c.probe_addresses) == {p.name for p in probes.CATALOGUE.values() if not p.starttls}


def test_environment_overrides_every_section(tmp_path: Path) -> None:
    env = {
        "HAVEDANE_DOMAIN": "y.test",
        "HAVEDANE_VERDICT_GRACE": "5",
        "HAVEDANE_SMTP_LISTEN": "127.0.0.1:25,127.0.0.2:25",
        "HAVEDANE_SMTP_PROXY_PROTOCOL": "yes",
        "HAVEDANE_WEB_TRUSTED_PROXIES": "10.0.0.0/8",
        "HAVEDANE_STORE_URL": "sqlite:///other.db",
    }
    c = config.load(write(tmp_path, 'domain = "x.test"\n'), env=env)
    assert c.domain == "y.test"
    assert c.grace == 5.0
    assert len(c.smtp_listen) == 2
    assert c.proxy_protocol is True
    assert c.trusted_proxies == ("10.0.0.0/8",)
    assert c.store_url == f"sqlite:///{tmp_path / 'other.db'}"


@pytest.mark.parametrize(
    "text,env,message",
    [
        ('domain = "x.test"\n[smtp]\nlisten = ["nonsense"]\n', {}, "smtp.listen"),
        ('domain = "x.test"\n[smtp]\ntimeout = "soon"\n', {}, "smtp.timeout"),
        ('domain = "x.test"\n[smtp]\nbogus = 1\n', {}, "unknown key smtp.bogus"),
        ('domain = "x.test"\n[nosuch]\n', {}, "unknown section [nosuch]"),
        ('domain = "x.test"\ncolour = "red"\n', {}, "unknown key colour"),
        ('domain = "not a domain"\n', {}, "domain"),
        ("", {}, "domain: missing"),
        ('domain = "x.test"\n', {"HAVEDANE_VERDICT_GRACE": "-1"}, "verdict.grace"),
        ('domain = "x.test"\n', {"HAVEDANE_SMTP_MAX_CONNECTIONS": "many"}, "smtp.max_connections"),
        ('domain = "x.test"\n[probes]\nenabled = ["do", "maybe"]\n', {}, "probes.enabled: unknown probe maybe"),
        ('domain = "x.test"\n[store]\nurl = "mysql://x"\n', {}, "store.url"),
        ('domain = "x.test\n', {}, "not valid TOML"),
        # Probe sets that cannot give a verdict: a must-deliver and a must-refuse classic probe are needed.
        ('domain = "x.test"\n[probes]\nenabled = ["do", "dont"]\n', {}, "probes.enabled: no verdict"),
        ('domain = "x.test"\n[probes]\nenabled = ["wrong"]\n', {}, "probes.enabled: no verdict"),
        (
            'domain = "x.test"\n[probes]\nenabled = []\nmatrix = true\naddresses = { notls = "192.0.2.8", '
            '"unusable-notls" = "192.0.2.9", "ta-notls" = "192.0.2.10" }\n',
            {},
            "probes.enabled: no verdict",
        ),  # fmt: skip
        # Values that cannot work.
        ('domain = "x.test"\n[smtp]\ntimeout = 0\n', {}, "smtp.timeout: must be greater than 0"),
        ('domain = "x.test"\n[retention]\ndays = 0\n', {}, "retention.days: must be greater than 0"),
        ('domain = "x.test"\n[smtp]\nlisten = []\n', {}, "smtp.listen: must name at least one"),
        ('domain = "x.test"\n', {"HAVEDANE_VERDICT_GRCE": "5"}, "HAVEDANE_VERDICT_GRCE"),
        ('domain = "1.2.3.4"\n', {}, "domain: must be a domain name"),
        ('domain = "-foo.example"\n', {}, "domain: must be a domain name"),
        ('domain = "x.test"\n[web]\nmetrics_from = ["localhost"]\n', {}, "web.metrics_from"),
        ('domain = "x.test"\n', {"HAVEDANE_WEB_METRICS_FROM": "10.0.0.0/33"}, "web.metrics_from"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, text), env=env)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(tmp_path / "nope.toml", env={})


def test_international_domain_is_its_a_label(tmp_path: Path) -> None:
    assert config.load(write(tmp_path, 'domain = "Bücher.Example."\n'), env={}).domain == "xn--bcher-kva.example"


def test_smallest_gradable_probe_set_loads(tmp_path: Path) -> None:
    c = config.load(write(tmp_path, 'domain = "x.test"\n[probes]\nenabled = ["dont", "wrong"]\n'), env={})
    assert [p.name for p in c.probes] == ["dont", "wrong"]


def test_test_suite_variables_are_not_config(tmp_path: Path) -> None:
    config.load(write(tmp_path, 'domain = "x.test"\n'), env={"HAVEDANE_PG_BIN": "/usr/lib/postgresql/15/bin"})
