"""``qnect auth-hook``: serve the MQTT auth hook for brokers that call out over HTTP.

Wires the parts: settings (root key, database URL) -> the registry's auth source -> a short
cache -> ``api.auth_hook.AuthHook`` -> ``api.app.create_app`` -> uvicorn on a loopback address.
The hook has no authentication of its own (brokers cannot all send a secret), so it listens
on loopback only, next to the broker node that calls it (deploy/auth-hook.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.auth_hook import DEFAULT_CACHE_TTL_S, MAX_CACHE_TTL_S, AuthHook, DeviceCache, broker_router
from api.mqtt_access import SERVICES
from crypto.broker_secrets import service_password
from crypto.keys import KekRing
from device_registry.postgres_auth import PostgresAuthSource
from qnect.logs import configure
from qnect.settings import Settings

DEFAULT_PORT = 8088  # clear of the defaults of EMQX (1883, 8083, 8084, 18083) and VerneMQ (8888)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(settings: Settings, *, cache_ttl_s: float = DEFAULT_CACHE_TTL_S) -> FastAPI:
    """The auth hook app for *settings*; the database connection lives as long as the app."""
    root = settings.root_key()
    source = PostgresAuthSource(settings.database_url.get_secret_value(), KekRing(root))
    passwords = {name: service_password(root, name) for name in SERVICES}
    hook = AuthHook(DeviceCache(source, ttl_s=cache_ttl_s), passwords)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        del app
        with source:
            yield

    return create_app(routers=[broker_router(hook)], lifespan=lifespan, title="Qnect auth hook")


def auth_hook(
    host: Annotated[
        str, typer.Option(envvar="QNECT_AUTH_HOOK_HOST", help="Loopback address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(envvar="QNECT_AUTH_HOOK_PORT", min=1, max=65535, help="TCP port.")
    ] = DEFAULT_PORT,
    cache_ttl: Annotated[
        float,
        typer.Option(
            min=0,
            max=MAX_CACHE_TTL_S,
            help="Seconds a device lookup is reused; a revocation takes effect within this.",
        ),
    ] = DEFAULT_CACHE_TTL_S,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve the MQTT auth hook (EMQX, mosquitto-go-auth, VerneMQ) on a loopback address."""
    if not _loopback(host):
        typer.echo(f"refusing to listen on {host}: the auth hook serves loopback only", err=True)
        raise typer.Exit(2)
    configure(log_level.upper())
    settings = Settings()  # type: ignore[call-arg]  # fields come from QNECT_* variables
    app = build_app(settings, cache_ttl_s=cache_ttl)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level=log_level.lower())
