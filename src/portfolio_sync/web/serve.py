"""`portfolio-sync serve`: one process running the HTTP app and the runtime in one loop.

uvicorn handles SIGINT/SIGTERM: it stops accepting requests and finishes the ones in
flight; then the runtime stops its sources and lets running syncs finish (or hands them
back: the next start's catch-up pass covers them) and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import threading
from collections.abc import Iterator

import uvicorn

from portfolio_sync.config import Settings
from portfolio_sync.errors import ConfigError
from portfolio_sync.runtime import Runtime
from portfolio_sync.wiring import open_service

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising the stop signal after its own shutdown.

    uvicorn restores the default SIGTERM handler and raises the signal again once it has
    stopped serving, which kills the process (exit -15) before the runtime can stop. Here
    the handlers are only restored, so `serve` goes on to stop the runtime and exits 0.
    Shutting down also ends the console's event streams first: uvicorn waits for open
    responses, and an event stream never ends by itself.
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.runtime.feed.close()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def run_server(settings: Settings, *, host: str, port: int, watch: bool = True) -> None:
    asyncio.run(serve(settings, host=host, port=port, watch=watch))


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts: a port in use is a
    configuration error (exit 2) with a hint, not uvicorn's `[Errno 98]` after start-up."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot listen on {host}: {exc.strerror}", hint="fix --host / PORTFOLIO_SYNC_HOST"
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use",
                hint="stop what runs there, or pick another port with --port "
                "(PORTFOLIO_SYNC_PORT; `make demo PORT=8081`)",
            ) from None
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="pick another --host / --port",
        ) from None
    sock.set_inheritable(True)
    return sock


async def serve(settings: Settings, *, host: str, port: int, watch: bool = True) -> None:
    from portfolio_sync.web.app import create_app

    sock = listen(host, port)
    with sock, open_service(settings) as svc:
        runtime = Runtime(svc, watch=watch)
        app = create_app(runtime)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=10,
        )
        server = _Server(config, runtime)
        if not settings.webhook_secret:
            logger.warning(
                "PORTFOLIO_SYNC_WEBHOOK_SECRET is not set: POST endpoints answer only "
                "requests from this machine (loopback)",
                extra={"action": "no_webhook_secret"},
            )
        async with runtime:
            print(
                f"portfolio-sync serving on http://{host}:{port}/ "
                f"(database {svc.catalog.describe()}, storage {svc.storage.description})",
                flush=True,
            )
            await server.serve(sockets=[sock])
