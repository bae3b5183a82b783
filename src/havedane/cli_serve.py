"""`havedane serve`: the receiver, the web app and the dnstap reader, by role, in one
process, with retention pruning; until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from havedane import __version__, pki
from havedane import config as configmod
from havedane.cli_setup import config_path, embedded_config, missing_certificate
from havedane.config import Config, ConfigError, Listen
from havedane.failure import Failure
from havedane.metrics import Metrics
from havedane.store import DriverMissing, Store, open_store

if TYPE_CHECKING:
    from havedane.dnstap import Reader

ROLES = ("all", "smtp", "web", "dns")


async def _until(stop: asyncio.Event) -> None:
    await stop.wait()


async def serve(
    config: Config, smtp: tuple[Listen, ...], web: Listen, ready: Callable[[str], None] = print, role: str = "all"
) -> None:
    from havedane.receiver import Receiver, probe_contexts
    from havedane.web.app import create_app, serve_forever

    if role == "dns":
        return await serve_dns(config, ready)
    try:
        pki.load_chains(config.tls_dir)  # before anything starts: a missing file is one clear line
    except FileNotFoundError as e:
        raise missing_certificate(e, config) from None
    store, stop = await open_for_serving(config)
    try:
        context = probe_contexts(config)
    except FileNotFoundError as e:
        raise missing_certificate(e, config) from None
    metrics = Metrics({"all": ("smtp", "web"), "web": ("web",)}.get(role, ()))  # what this process runs
    receiver = Receiver(config, store, context, metrics)
    dnstap = await start_dnstap(config, store, metrics) if role == "all" and config.dnstap_socket else None
    try:
        if role != "web":
            try:
                await receiver.start(smtp)
            except OSError as e:
                raise Failure(f"cannot listen for SMTP on {', '.join(map(str, smtp))}: {e.strerror or e}") from None
        web_ready = asyncio.Event()
        if role == "smtp":  # a receiver only: runs until stopped
            web_ready.set()
            web_task = asyncio.create_task(_until(stop))
        else:
            app = create_app(config, store, metrics=metrics)
            web_task = asyncio.create_task(
                serve_forever(app, web.host, web.port, stop, web_ready, config.stream_send_timeout)
            )
        prune_task = asyncio.create_task(prune_forever(config, store))
        ready_wait = asyncio.create_task(web_ready.wait())
        await asyncio.wait({web_task, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
        if web_task.done():
            ready_wait.cancel()
            prune_task.cancel()
            exc = web_task.exception()
            raise Failure(f"cannot listen for HTTP on {web}: {getattr(exc, 'strerror', None) or exc}")
        smtp_at = ", ".join(f"{h}:{p}" for h, p in receiver.bound())
        parts = [f"domain {config.domain}"]
        parts += [f"SMTP on {smtp_at}"] if role != "web" else []
        parts += [f"web on http://{web} (open it in a browser)"] if role != "smtp" else []
        parts += [f"dnstap on {config.dnstap_socket}"] if dnstap else []
        ready(f"havedane {__version__}: {'; '.join(parts)}")
        await web_task
        prune_task.cancel()
    finally:
        await receiver.stop()
        if dnstap is not None:
            await dnstap.stop()
        await store.close()


async def start_dnstap(config: Config, store: Store, metrics: Metrics | None = None) -> Reader:
    from havedane.dnstap import reader_for

    reader = reader_for(config, store, metrics)
    try:
        await reader.start()
    except OSError as e:
        await store.close()
        raise Failure(f"cannot listen for dnstap on {config.dnstap_socket}: {e.strerror or e}") from None
    return reader


async def open_for_serving(config: Config) -> tuple[Store, asyncio.Event]:
    """The open store, and the event SIGTERM/SIGINT set: what every role of `serve` needs."""
    try:
        store = open_store(config.store_url, config.store_busy_timeout, config.store_write_timeout)
    except DriverMissing as e:
        raise Failure(str(e), 2) from None
    try:
        await store.open()
    except Exception as e:  # noqa: BLE001 - reported as one line
        raise Failure(f"cannot open the store {config.store_url}: {e}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return store, stop


async def serve_dns(config: Config, ready: Callable[[str], None]) -> None:
    """`serve --role dns`: the dnstap reader next to one Knot, writing to the shared store."""
    if config.dnstap_socket is None:
        raise Failure("serve --role dns needs [dns] dnstap_socket (the socket Knot's mod-dnstap writes to)", 2)
    store, stop = await open_for_serving(config)
    reader = await start_dnstap(config, store)
    try:
        ready(f"havedane {__version__}: domain {config.domain}; dnstap on {config.dnstap_socket}")
        await stop.wait()
    finally:
        await reader.stop()
        await store.close()


async def prune_forever(config: Config, store: Store) -> None:
    """Retention ([retention] in README): at start, then every 10 minutes."""
    while True:
        now = time.time()
        keep = config.retention_days * 86400
        try:
            await store.prune(now - keep, now - min(keep, 86400), config.max_orphan_sessions)
            await store.prune_dns(now - min(keep, 86400), config.max_zone_queries)
        except Exception as e:  # noqa: BLE001 - pruning must never stop the service
            logging.getLogger("havedane").error("pruning failed: %s", e)
        await asyncio.sleep(600)


def cmd_serve(args: argparse.Namespace) -> int:
    path = config_path(args.config) or embedded_config()
    try:
        config = configmod.load(path)
    except ConfigError as e:
        raise Failure(f"config: {e}", 2) from None
    smtp = tuple(args.smtp_listen) if args.smtp_listen else config.smtp_listen
    web = args.web_listen or config.web_listen
    if (
        args.web_listen
        and "public_url" not in config.raw.get("web", {})
        and "HAVEDANE_WEB_PUBLIC_URL" not in os.environ
    ):
        config = dataclasses.replace(config, public_url=f"http://{web}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter

    def ready(line: str) -> None:
        print(line, flush=True)

    try:
        import uvloop  # installed with uvicorn[standard]: a faster event loop for SMTP and HTTP alike
    except ImportError:
        asyncio.run(serve(config, smtp, web, ready, args.role))
    else:
        uvloop.run(serve(config, smtp, web, ready, args.role))
    return 0
