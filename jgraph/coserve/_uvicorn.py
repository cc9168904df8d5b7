"""Running the app with uvicorn, in the foreground (`serve`) or in a thread (`ServerThread`,
for tests and the demo)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from jgraph.coserve._serve_config import ServeConfig
from jgraph.coserve._server import make_app
from jgraph.coserve._service import CoServeService

__all__ = ["ServerThread", "free_port", "serve"]

log = logging.getLogger(__name__)


def serve(config: ServeConfig, *, service: CoServeService | None = None) -> None:
    """Loads the model, starts the engine thread and serves HTTP until interrupted.

    Args:
        config: what to serve and where (``host``, ``port``).
        service: a service built earlier (default: one built from ``config``).
    """
    service = service or CoServeService(config)
    app = make_app(service)
    log.info("serving %s on http://%s:%d", service.base_name, config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerThread:
    """Serves ``service`` over HTTP on a background thread (the service is started and
    closed with it).

    Example:
        >>> srv = ServerThread(service).start()  # doctest: +SKIP
        >>> srv.url  # doctest: +SKIP
        'http://127.0.0.1:54321'
    """

    def __init__(self, service: CoServeService, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self.host, self.port = host, port or free_port(host)
        conf = uvicorn.Config(
            make_app(service), host=self.host, port=self.port, log_level="warning",
            lifespan="on",
        )  # fmt: skip
        self._server = uvicorn.Server(conf)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, *, timeout: float = 60.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=60)
