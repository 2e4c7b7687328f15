"""Graceful shutdown of ``qnect api``: readiness goes false first, then uvicorn drains.

On the first SIGTERM (or SIGINT) ``/readyz`` answers 503 ``{"status": "draining"}`` for
``drain_s`` seconds while everything else is still served, so a load balancer polling readiness
takes the process out of rotation before it stops accepting; then uvicorn's own shutdown runs
(listening sockets closed, idle keep-alive connections closed, requests in flight finished, the
lifespan ended). A second signal skips the wait. Does not own the app or its routes.
"""

from __future__ import annotations

import threading
from types import FrameType

import structlog
import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

log = structlog.get_logger("qnect.api")


class ReadinessGate:
    """ASGI wrapper: ``/readyz`` is 503 once *draining* is set; everything else passes."""

    def __init__(self, app: ASGIApp, draining: threading.Event) -> None:
        """Wrap *app*."""
        self._app = app
        self._draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer ``/readyz`` while draining, else hand the request to the app."""
        if scope["type"] == "http" and scope["path"] == "/readyz" and self._draining.is_set():
            response = JSONResponse({"status": "draining"}, status_code=503)
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, draining: threading.Event, drain_s: float) -> None:
        super().__init__(config)
        self._draining = draining
        self._drain_s = drain_s
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining.is_set() or self._drain_s <= 0:
            self._draining.set()
            if self._timer is not None:
                self._timer.cancel()
            super().handle_exit(sig, frame)
            return
        self._draining.set()
        log.info("api.draining", seconds=self._drain_s)
        self._timer = threading.Timer(self._drain_s, super().handle_exit, (sig, frame))
        self._timer.daemon = True
        self._timer.start()


def run(app: ASGIApp, host: str, port: int, *, drain_s: float) -> None:
    """Serve *app* until a signal, answering ``/readyz`` with 503 for *drain_s* first."""
    draining = threading.Event()
    config = uvicorn.Config(
        ReadinessGate(app, draining), host=host, port=port, log_config=None, access_log=False
    )
    _DrainingServer(config, draining, drain_s).run()
    log.info("api.stopped")
