"""Mosquitto dynamic-security commands for Qnect's identities (pure, no I/O).

Mosquitto 2.0.11's dynsec does not substitute ``%c`` in ACLs (research/mqtt-broker-facts.md
§1), so each device gets its own role naming its own topics:

* a device may publish under ``devices/<id>/up/`` and subscribe under ``devices/<id>/down/``,
  and receives nothing else; its client id is pinned to its device id;
* the ``bridge`` identity consumes every uplink (incl. the ``$share`` group) and publishes
  downlinks; the ``loadgen`` identity (benchmarks only) may publish any device's uplink;
* the default ACL access denies everything a role does not grant, *including*
  ``publishClientReceive`` (on by default in dynsec).

Commands are batched (one PUBLISH carries many; one at a time costs a round trip each) and
:func:`plan_sync` turns "what the registry says" and "what the broker has" into the commands
that make the broker agree, so a broker restored from backup can be reconciled idempotently.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Command = dict[str, Any]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
DEVICE_ROLE_PREFIX = "qnect-device-"
BRIDGE = "bridge"
LOADGEN = "loadgen"
SERVICE_ROLES = {BRIDGE: "qnect-bridge", LOADGEN: "qnect-loadgen"}
# Errors that mean "already in the state we asked for": a replayed batch is harmless.
IDEMPOTENT_ERRORS = frozenset(
    {"Client already exists", "Role already exists", "Client not found", "Role not found"}
)

DEFAULT_ACCESS: list[dict[str, object]] = [
    {"acltype": "publishClientSend", "allow": False},
    {"acltype": "publishClientReceive", "allow": False},
    {"acltype": "subscribe", "allow": False},
    {"acltype": "unsubscribe", "allow": True},
]


def _acl(acltype: str, topic: str) -> dict[str, object]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def device_role(device_id: str) -> str:
    """Role name of *device_id*."""
    return DEVICE_ROLE_PREFIX + device_id


def device_acls(device_id: str) -> list[dict[str, object]]:
    """What a device may do: its own uplink out, its own downlink in, nothing else."""
    up, down = f"devices/{device_id}/up/#", f"devices/{device_id}/down/#"
    return [
        _acl("publishClientSend", up),
        _acl("subscribePattern", down),
        _acl("publishClientReceive", down),
    ]


def service_acls(name: str) -> list[dict[str, object]]:
    """What a service identity may do."""
    if name == BRIDGE:
        return [
            _acl("subscribePattern", "$share/ingest/devices/+/up/#"),
            _acl("subscribePattern", "devices/+/up/#"),
            _acl("publishClientReceive", "devices/+/up/#"),
            _acl("publishClientSend", "devices/+/down/#"),
        ]
    if name == LOADGEN:  # publishes as any device; its own bench/ topics for the ceilings
        return [
            _acl("publishClientSend", "devices/+/up/#"),
            _acl("publishClientSend", "bench/#"),
            _acl("subscribePattern", "bench/#"),
            _acl("publishClientReceive", "bench/#"),
        ]
    raise ValueError("unknown service identity")


def create_device(device_id: str, password: str) -> list[Command]:
    """Role and client of a new device (client id pinned to the device id)."""
    role = device_role(device_id)
    return [
        {"command": "createRole", "rolename": role, "acls": device_acls(device_id)},
        {
            "command": "createClient",
            "username": device_id,
            "password": password,
            "clientid": device_id,
            "roles": [{"rolename": role}],
        },
    ]


def delete_device(device_id: str) -> list[Command]:
    """Remove a device from the broker; deleting the client disconnects it at once."""
    return [
        {"command": "deleteClient", "username": device_id},
        {"command": "deleteRole", "rolename": device_role(device_id)},
    ]


def create_service(name: str, password: str) -> list[Command]:
    """Role and client of a service identity (no client id pin: many workers share it)."""
    role = SERVICE_ROLES[name]
    return [
        {"command": "createRole", "rolename": role, "acls": service_acls(name)},
        {
            "command": "createClient",
            "username": name,
            "password": password,
            "roles": [{"rolename": role}],
        },
    ]


def set_default_access() -> Command:
    """Deny by default, receiving included."""
    return {"command": "setDefaultACLAccess", "acls": DEFAULT_ACCESS}


@dataclass(frozen=True, slots=True)
class BrokerState:
    """What the broker holds: client usernames and role names."""

    clients: frozenset[str]
    roles: frozenset[str]

    @classmethod
    def from_responses(cls, responses: Sequence[Mapping[str, Any]]) -> BrokerState:
        """Read ``listClients`` and ``listRoles`` responses."""
        clients: frozenset[str] = frozenset()
        roles: frozenset[str] = frozenset()
        for r in responses:
            data = r.get("data") or {}
            if r.get("command") == "listClients":
                clients = frozenset(str(c) for c in data.get("clients", []))
            elif r.get("command") == "listRoles":
                roles = frozenset(str(c) for c in data.get("roles", []))
        return cls(clients, roles)


LIST_STATE: list[Command] = [
    {"command": "listClients", "count": -1, "offset": 0},
    {"command": "listRoles", "count": -1, "offset": 0},
]


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """The commands that reconcile a broker, and what they do."""

    commands: list[Command]
    created: int
    removed: int
    services: int


def plan_sync(
    active: Mapping[str, str],
    revoked: Iterable[str],
    services: Mapping[str, str],
    broker: BrokerState,
) -> SyncPlan:
    """Commands that make *broker* hold exactly the registry's identities.

    *active* maps device ids to their passwords, *services* service names to theirs. Devices
    the registry revoked, and device roles or clients the registry does not know, are removed;
    anything else on the broker (its admin, other tenants) is left alone. Existing clients keep
    their passwords: resetting one would disconnect the device.
    """
    commands: list[Command] = [set_default_access()]
    created = removed = 0
    for name, password in services.items():
        if name not in broker.clients:
            commands += create_service(name, password)
    for device_id, password in active.items():
        if device_id not in broker.clients:
            if device_role(device_id) in broker.roles:  # half-created earlier
                commands.append({"command": "deleteRole", "rolename": device_role(device_id)})
            commands += create_device(device_id, password)
            created += 1
    known = set(active)
    stale = {d for d in revoked if d in broker.clients or device_role(d) in broker.roles}
    stale |= {
        r.removeprefix(DEVICE_ROLE_PREFIX)
        for r in broker.roles
        if r.startswith(DEVICE_ROLE_PREFIX) and r.removeprefix(DEVICE_ROLE_PREFIX) not in known
    }
    for device_id in sorted(stale):
        commands += delete_device(device_id)
        removed += 1
    return SyncPlan(commands, created, removed, len(services))


def errors_of(responses: Sequence[Mapping[str, Any]]) -> list[str]:
    """The errors in a batch's responses that are not idempotent no-ops."""
    return [
        f"{r.get('command')}: {r['error']}"
        for r in responses
        if "error" in r and r["error"] not in IDEMPOTENT_ERRORS
    ]


# -- the dynsec file itself, for brokers that are stopped ----------------------------------
# Mosquitto 2.0's dynsec stores PBKDF2-HMAC-SHA512 (64 bytes) over a 12-byte salt, 101
# iterations, base64 (checked against a file `mosquitto_ctrl dynsec init` wrote). Writing the
# file directly is O(n) where the online commands are O(n^2) (each one rewrites the file).
HASH_ITERATIONS = 101
SALT_BYTES = 12
ADMIN = "admin"
ADMIN_ROLE = "qnect-admin"
# Only the control topic: unlike `mosquitto_ctrl dynsec init`'s admin, ours reads no device data.
ADMIN_ACLS = [
    _acl("publishClientSend", "$CONTROL/dynamic-security/#"),
    _acl("publishClientReceive", "$CONTROL/dynamic-security/#"),
    _acl("subscribePattern", "$CONTROL/dynamic-security/#"),
]


def hashed(password: str, salt: bytes) -> dict[str, object]:
    """The password fields of a dynsec client."""
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, HASH_ITERATIONS, 64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": HASH_ITERATIONS,
    }


def config_file(
    admin_password: str,
    services: Mapping[str, str],
    devices: Mapping[str, str],
    rand: Callable[[int], bytes],
) -> dict[str, object]:
    """A complete dynsec document: admin, service identities and every device, deny by default."""
    clients: list[dict[str, object]] = [
        {
            "username": ADMIN,
            "roles": [{"rolename": ADMIN_ROLE}],
            **hashed(admin_password, rand(SALT_BYTES)),
        }
    ]
    roles: list[dict[str, object]] = [{"rolename": ADMIN_ROLE, "acls": ADMIN_ACLS}]
    for name, password in services.items():
        role = SERVICE_ROLES[name]
        roles.append({"rolename": role, "acls": service_acls(name)})
        clients.append(
            {"username": name, "roles": [{"rolename": role}], **hashed(password, rand(SALT_BYTES))}
        )
    for device_id, password in devices.items():
        role = device_role(device_id)
        roles.append({"rolename": role, "acls": device_acls(device_id)})
        clients.append(
            {
                "username": device_id,
                "clientid": device_id,
                "roles": [{"rolename": role}],
                **hashed(password, rand(SALT_BYTES)),
            }
        )
    default = {str(a["acltype"]): a["allow"] for a in DEFAULT_ACCESS}
    return {"defaultACLAccess": default, "clients": clients, "groups": [], "roles": roles}
