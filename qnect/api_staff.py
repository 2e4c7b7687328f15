"""The staff side of ``qnect api``: operator, support and DPO routers, wired to PostgreSQL.

Also the broker seam of provisioning and revocation (``DynsecIdentities``): with
``QNECT_BROKER_DYNSEC`` on, new devices are created in Mosquitto's dynamic security and revoked
ones deleted (which closes their connection); off (brokers that call the auth hook), nothing is
pushed because the registry is what the hook asks. A broker that cannot be reached leaves the
registry change standing and answers ``False``: ``qnect broker sync`` finishes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from fastapi import APIRouter

from api.auth import Authenticator
from api.dpo import dpo_router
from api.ops import ops_router, support_router
from api.tokens import Role
from broker_bridge.dynsec import delete_device
from broker_bridge.errors import BrokerError
from device_registry.postgres_fleet import PostgresFleet
from privacy.postgres_oversight import PostgresOversight
from qnect import broker, rights
from qnect.settings import Settings

log = structlog.get_logger("qnect.api_staff")


class DynsecIdentities:
    """Pushes and removes device identities at a dynamic-security broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def push(self, device_ids: Sequence[str]) -> bool:
        """Create the devices' clients and roles; ``False`` if the broker was not reachable."""
        if not self.settings.broker_dynsec or not device_ids:
            return not self.settings.broker_dynsec
        try:
            broker.push_devices(self.settings, device_ids)
        except (BrokerError, OSError) as exc:
            log.warning("ops.broker_push_failed", devices=len(device_ids), error=type(exc).__name__)
            return False
        return True

    def remove(self, device_id: str) -> bool:
        """Delete the device's client (its live connection closes); ``False`` if not done."""
        if not self.settings.broker_dynsec:
            return False
        try:
            with broker.admin(self.settings) as client:
                client.run(delete_device(device_id))
        except (BrokerError, OSError) as exc:
            log.warning("ops.broker_remove_failed", error=type(exc).__name__)
            return False
        return True


def staff_routers(settings: Settings, auth: Authenticator) -> list[APIRouter]:
    """Operator (``/v1/ops``), support (``/v1/support``) and DPO (``/v1/dpo``) routes."""
    privacy = rights.build(settings.root_key())
    dsn = settings.database_url.get_secret_value()
    fleet = PostgresFleet(dsn, keys=settings.registry_keys(), gate=privacy.gate)
    oversight = PostgresOversight(dsn, gate=privacy.gate)
    return [
        ops_router(fleet, DynsecIdentities(settings), auth.requires(Role.OPERATOR)),
        support_router(fleet, auth.requires(Role.SUPPORT)),
        dpo_router(oversight, privacy.purposes, auth.requires(Role.DPO)),
    ]
