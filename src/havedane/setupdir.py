"""`havedane init`: the directory a deployment runs from (havedane.toml, the CA and
certificates in tls/, the SQLite database), written whole or completed."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from havedane import config as configmod
from havedane import config_keys, pki, store
from havedane.config import Config, ConfigError
from havedane.failure import Failure


def init(
    domain: str, directory: Path, force: bool, smtp_listen: list[str] | None = None, web_listen: str | None = None
) -> Path:
    """Write havedane.toml, the CA and certificates, and the database into `directory`."""
    try:
        domain = config_keys.domain_name(domain)
    except ValueError as e:
        raise Failure(f"--domain: {e}", 2) from None
    path = directory / "havedane.toml"
    existing = [p for p in (path, directory / "tls" / "ca.key") if p.exists()]
    if existing and not force:
        raise Failure(f"{existing[0]} exists: refusing to overwrite it (use --force to replace the setup)")
    text = configmod.render(domain, smtp_listen or ["127.0.0.1:2525"], web_listen or "127.0.0.1:8080")
    if directory.exists() and not directory.is_dir():
        raise Failure(f"--dir: {directory} exists and is not a directory", 2)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise Failure(f"--dir: cannot create {directory}: {e.strerror or e}", 2) from None
    try:
        # Everything is made in a staging folder and moved into place at the end, the
        # configuration last: a run that fails half-way leaves nothing that blocks the next.
        staging = Path(tempfile.mkdtemp(prefix=".havedane-init-", dir=directory))
        try:
            (staging / "havedane.toml").write_text(text)
            pki.create(staging / "tls", domain)
            _move_into(staging / "tls", directory / "tls")
            os.replace(staging / "havedane.toml", path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:
        where = e.filename or directory
        raise Failure(f"--dir: cannot write {where}: {e.strerror or e}", 2) from None
    _create_database(configmod.load(path, env={}))
    return path


def _move_into(new: Path, target: Path) -> None:
    """Move the files of `new` into `target` (replacing those of the same name)."""
    if not target.exists():
        os.replace(new, target)
        return
    for f in new.iterdir():
        os.replace(f, target / f.name)


def _create_database(config: Config) -> None:
    """Create the SQLite database, or bring it up to date. An existing one is kept,
    with every test in it, whatever else is replaced."""
    if store.parse_url(config.store_url).kind == "sqlite":
        try:
            store.upgrade(config.store_url, config.store_busy_timeout)
        except store.StoreError as e:
            raise Failure(str(e)) from None


def add_missing(path: Path) -> list[str]:
    """`init --add-missing`: the chains and database that are missing, made with the
    existing CA; the configuration, the CA and the database are kept as they are."""
    if not path.exists():
        raise Failure(f"no {path}: run `havedane init --domain D` first", 2)
    try:
        config = configmod.load(path)
    except ConfigError as e:
        raise Failure(f"config: {e}", 2) from None
    try:
        added = pki.add_missing(config.tls_dir, config.domain)
    except FileNotFoundError as e:
        raise Failure(
            f"{e.filename} missing: without the CA every published TLSA record changes; "
            "`havedane init --force` makes a new one (the database is kept)",
            2,
        ) from None
    except (OSError, ValueError) as e:
        raise Failure(f"cannot add the missing certificates: {e}") from None
    _create_database(config)
    if added:
        print(f"made {', '.join(added)} with the existing CA in {config.tls_dir}")
        print(f"publish `havedane records --config {path}` again: the DANE-EE (3 1 1) records of new leaves changed")
    else:
        print(f"nothing was missing in {config.tls_dir}")
    return added
