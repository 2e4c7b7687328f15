"""``qnect api``: the HTTP API for devices, the app, operators and the DPO (composition).

It serves device activation (``/v1/devices/{id}/activate``), ``/healthz``, ``/readyz``,
authentication (``/v1/auth``) and the mobile app (``/v1/me``); the operator and DPO routes
join here as further routers, each guarded by ``Authenticator.requires(<role>)``.
"""

from __future__ import annotations

import functools
import signal
from datetime import timedelta

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.app import create_app
from api.auth import AuthConfig, Authenticator, auth_router
from api.firmware import firmware_router
from api.me import me_router
from api.metrics import OTA_DEVICES
from api.oidc import OidcVerifier
from api.pairing import pairing_router
from api.tokens import LOGIN_INFO, SIGNING_INFO, Role, derive_key
from device_registry.postgres_accounts import PostgresAccounts
from device_registry.postgres_firmware import PostgresFirmware
from device_registry.postgres_home import PostgresHome
from device_registry.postgres_identity import database_ready
from device_registry.postgres_ota import ota_state_counts
from device_registry.postgres_pairing import PostgresActivator
from qnect import api_shutdown, rights
from qnect.api_staff import staff_routers
from qnect.settings import Settings
from qnect.settings_api import ApiSettings


def authenticator(settings: Settings, api: ApiSettings) -> Authenticator:
    """Password logins and tokens, keys derived from the root key."""
    root = settings.root_key()
    oidc = api.oidc()
    config = AuthConfig(
        signing_seed=derive_key(root, SIGNING_INFO),
        login_key=derive_key(root, LOGIN_INFO),
        access_ttl_s=api.access_token_ttl_s,
        refresh_ttl=timedelta(days=api.refresh_token_ttl_days),
    )
    accounts = PostgresAccounts(settings.database_url.get_secret_value())
    return Authenticator(accounts, config, oidc=OidcVerifier(oidc) if oidc else None)


def _app_routes(settings: Settings, auth: Authenticator) -> APIRouter:
    privacy = rights.build(settings.root_key())
    home = PostgresHome(
        settings.database_url.get_secret_value(),
        gate=privacy.gate,
        rights=privacy.rights,
        ring=privacy.ring,
        audit_keys=privacy.audit_keys,
        purposes=privacy.purposes,
    )
    return me_router(home, auth.requires(Role.USER), auth.confirm_password)


def build_app(settings: Settings, api: ApiSettings | None = None) -> FastAPI:
    """The API app for *settings* (*api* read from the environment when not given)."""
    api = api or ApiSettings()
    dsn = settings.database_url.get_secret_value()
    ready = APIRouter(tags=["health"])

    @ready.get("/readyz", summary="Readiness: the database answers")
    async def readyz() -> JSONResponse:
        if await run_in_threadpool(database_ready, dsn):
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "unavailable"}, status_code=503)

    OTA_DEVICES.source = functools.partial(ota_state_counts, dsn)  # qnect_ota_devices
    activator = PostgresActivator(dsn, settings.kek_ring())
    auth = authenticator(settings, api)
    firmware = PostgresFirmware(dsn, settings.ota_release_key())
    routers = [ready, pairing_router(activator), auth_router(auth), _app_routes(settings, auth)]
    routers.append(firmware_router(firmware, auth.requires(Role.OPERATOR)))
    routers += staff_routers(settings, auth)  # /v1/ops, /v1/support, /v1/dpo
    return create_app(routers=routers, title="Qnect API")


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the API until SIGTERM: /readyz 503 first, then it stops accepting, drains, exits 0."""
    # uvicorn re-raises the signal it shut down for once it restores the previous handlers;
    # with these no-op handlers that ends in a normal exit (0), not death by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    api_shutdown.run(build_app(settings), host, port, drain_s=settings.api_drain_s)
