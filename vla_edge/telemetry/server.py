"""The metrics endpoint: ``/metrics`` (prometheus_client's WSGI app) and ``/status.json``, on the stdlib WSGI server.

prometheus_client renders the exposition (text 0.0.4 or OpenMetrics, as the scraper asks; gzip when accepted;
``?name[]=`` filters). This module only routes the two paths and runs the server on a background thread, the way
``prometheus_client.start_wsgi_server`` does, with a status route it does not have.

Binds 127.0.0.1 by default: metrics reveal what the robot is doing, so exposing them is a choice.
``port=0`` picks a free port (see ``.port``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from vla_edge.telemetry.metrics import DaemonMetrics
from vla_edge.telemetry.status import StatusProvider, build_status

log = logging.getLogger(__name__)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature from http.server)
        log.debug("telemetry %s " + format, self.address_string(), *args)


def make_app(metrics: DaemonMetrics, status_provider: StatusProvider | None = None) -> Callable[..., Iterable[bytes]]:
    """The WSGI application: ``/metrics``, ``/status.json``, 404 for anything else; 500 without a traceback."""
    prometheus = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        try:
            if path == "/metrics":
                return prometheus(environ, start_response)
            if path == "/status.json":
                state = status_provider() if status_provider is not None else {}
                body = build_status(metrics, state).model_dump_json().encode()
                return _reply(start_response, "200 OK", "application/json", body)
            return _reply(start_response, "404 Not Found", "text/plain; charset=utf-8",
                          b"not found: try /metrics or /status.json\n")
        except Exception:  # the client gets a status line, never a traceback; the log gets the details
            log.exception("telemetry request %s failed", path)
            return _reply(start_response, "500 Internal Server Error", "text/plain; charset=utf-8",
                          b"internal error (see the daemon's log)\n")

    return app


def _reply(start_response: Callable[..., Any], status: str, content_type: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
    return [body]


class MetricsServer:
    """Serves `make_app` on a background thread; a context manager, or ``start()`` / ``stop()``."""

    def __init__(self, metrics: DaemonMetrics, host: str = "127.0.0.1", port: int = 9780,
                 status_provider: StatusProvider | None = None) -> None:
        self._server = make_server(host, port, make_app(metrics, status_provider), ThreadingWSGIServer,
                                   handler_class=_QuietHandler)
        self._host = host
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        shown = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{shown}:{self.port}"

    def start(self) -> MetricsServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
