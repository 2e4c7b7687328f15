"""Keep the broker's identities in step with the registry (composition of registry + dynsec).

Provisioning pushes new devices, revocation removes them (which disconnects them at once), and
:func:`sync` reconciles a whole broker, e.g. one restored from an old backup: missing devices
and services are created, revoked or unknown devices removed, existing clients left connected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import structlog

from broker_bridge.dynsec import (
    BRIDGE,
    LOADGEN,
    SyncPlan,
    config_file,
    create_device,
    delete_device,
    plan_sync,
)
from broker_bridge.mqtt import BrokerAddress
from broker_bridge.mqtt_admin import DynsecAdmin
from device_registry.postgres_identity import broker_identities, revoke_device
from qnect.local_broker import write_dynsec_file
from qnect.settings import Settings

log = structlog.get_logger("qnect.broker")


def admin(settings: Settings, address: BrokerAddress | None = None) -> DynsecAdmin:
    """An admin connection to the broker (use as a context manager)."""
    target = address or BrokerAddress.parse(settings.mqtt_url)
    password = settings.registry_keys().broker.service("admin")
    return DynsecAdmin(target, password)


def sync(
    settings: Settings,
    *,
    address: BrokerAddress | None = None,
    services: Sequence[str] = (BRIDGE,),
) -> SyncPlan:
    """Reconcile the broker with the whole registry (idempotent)."""
    keys = settings.registry_keys()
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        active, revoked = broker_identities(conn, keys)
    passwords = {name: keys.broker.service(name) for name in services}
    with admin(settings, address) as client:
        plan = plan_sync(active, revoked, passwords, client.state())
        client.run(plan.commands)
    log.info("broker.synced", created=plan.created, removed=plan.removed)
    return plan


def write_offline(settings: Settings, path: Path, *, services: Sequence[str] = (BRIDGE,)) -> int:
    """Write a complete dynsec file from the registry for a *stopped* broker; returns devices.

    O(n) where the online commands are O(n²) (every command rewrites the broker's file): the
    way to restore or seed a broker with a large fleet. Revoked devices are simply absent.
    """
    keys = settings.registry_keys()
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        active, _revoked = broker_identities(conn, keys)
    passwords = {name: keys.broker.service(name) for name in services}
    document = config_file(keys.broker.service("admin"), passwords, active, os.urandom)
    write_dynsec_file(path, document)
    log.info("broker.written_offline", devices=len(active))
    return len(active)


def push_devices(
    settings: Settings, device_ids: Sequence[str], *, address: BrokerAddress | None = None
) -> int:
    """Create freshly provisioned devices at the broker; returns how many."""
    keys = settings.registry_keys()
    commands = [c for d in device_ids for c in create_device(d, keys.broker.device(d))]
    with admin(settings, address) as client:
        client.run(commands)
    return len(device_ids)


@dataclass(frozen=True, slots=True)
class Revocation:
    """What revoking a device did."""

    revoked: bool  # the registry had it active
    disconnected: bool  # the broker removed it (and closed its connection)


def revoke(
    settings: Settings, device_id: str, *, address: BrokerAddress | None = None
) -> Revocation:
    """Revoke in the registry first (frames refused, root key destroyed), then at the broker.

    If the broker cannot be reached the registry change stands and ``qnect broker sync``
    finishes the job later; the frames the device still manages to send are refused.
    """
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        revoked = revoke_device(conn, device_id)
    if not settings.broker_dynsec:
        return Revocation(revoked, disconnected=False)
    with admin(settings, address) as client:
        client.run(delete_device(device_id))
    return Revocation(revoked, disconnected=True)


LOAD_GENERATOR = LOADGEN  # re-exported for the benchmark
