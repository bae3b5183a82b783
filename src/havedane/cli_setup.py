"""The `havedane` command line: finding and loading the configuration, and `init`.

Every command takes --config F (default ./havedane.toml, else the embedded
default's, which `serve` creates for a local trial on first use).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from havedane import config as configmod
from havedane.config import Config, ConfigError
from havedane.failure import Failure
from havedane.setupdir import add_missing, init

EMBEDDED_DOMAIN = "havedane.localhost"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "havedane"


def config_path(arg: str | None) -> Path | None:
    """--config, else ./havedane.toml, else the embedded default's file (if it exists)."""
    if arg:
        return Path(arg)
    if Path("havedane.toml").exists():
        return Path("havedane.toml")
    embedded = default_data_dir() / "havedane.toml"
    return embedded if embedded.exists() else None


def load_config(arg: str | None) -> Config:
    path = config_path(arg)
    if path is None:
        raise Failure("no havedane.toml here: run `havedane init --domain D` or pass --config F", 2)
    try:
        return configmod.load(path)
    except ConfigError as e:
        raise Failure(f"config: {e}", 2) from None


def missing_certificate(e: FileNotFoundError, config: Config) -> Failure:
    where = f" --config {config.path}" if config.path else ""
    return Failure(f"certificates missing ({e.filename}): run `havedane init --add-missing{where}`", 2)


def cmd_init(args: argparse.Namespace) -> int:
    if args.add_missing:
        if args.force:
            raise Failure("--add-missing keeps the setup, --force replaces it: give one of them", 2)
        add_missing(Path(args.config) if args.config else Path(args.dir) / "havedane.toml")
        return 0
    if not args.domain:
        raise Failure("init: --domain is required (or --add-missing, to complete an existing setup)", 2)
    path = init(args.domain, Path(args.dir), args.force)
    print(f"wrote {path}, certificates in {path.parent / 'tls'}, database {path.parent / 'havedane.sqlite3'}")
    print(f"next: havedane records --config {path} --address <public IP>   (DNS to publish)")
    print(f"      havedane serve --config {path}")
    return 0


def embedded_config() -> Path:
    """The embedded default for a local trial: created on first use, reused after."""
    directory = default_data_dir()
    path = directory / "havedane.toml"
    # The trial's folder is the user's alone (its database holds senders' addresses); a trial
    # made by an earlier havedane, with the umask's 0755, is closed here too.
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
    except OSError as e:
        raise Failure(f"cannot make the trial folder {directory} private: {e.strerror or e}", 2) from None
    if not path.exists():
        init(EMBEDDED_DOMAIN, directory, force=False)
        print(f"havedane: created a trial setup for {EMBEDDED_DOMAIN} in {directory}", flush=True)
    return path
