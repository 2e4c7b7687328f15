"""``qnect api``: the HTTP API for devices, the app, operators and the DPO (composition).

Today it serves device activation (``/v1/devices/{id}/activate``), ``/healthz`` and
``/readyz``; the mobile, operator and DPO routes of issue 6 join here as further routers.
"""

from __future__ import annotations

import signal

import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.app import create_app
from api.pairing import pairing_router
from device_registry.postgres_identity import database_ready
from device_registry.postgres_pairing import PostgresActivator
from qnect.settings import Settings


def build_app(settings: Settings) -> FastAPI:
    """The API app for *settings*."""
    dsn = settings.database_url.get_secret_value()
    ready = APIRouter(tags=["health"])

    @ready.get("/readyz", summary="Readiness: the database answers")
    async def readyz() -> JSONResponse:
        if await run_in_threadpool(database_ready, dsn):
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "unavailable"}, status_code=503)

    activator = PostgresActivator(dsn, settings.kek_ring())
    return create_app(routers=[ready, pairing_router(activator)], title="Qnect API")


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the API with uvicorn until SIGTERM: it stops accepting, drains, and we exit 0."""
    # uvicorn re-raises the signal it shut down for once it restores the previous handlers;
    # with these no-op handlers that ends in a normal exit (0), not death by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(build_app(settings), host=host, port=port, log_config=None, access_log=False)
