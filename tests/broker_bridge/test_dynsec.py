"""Dynamic-security commands and the sync plan (pure)."""

from __future__ import annotations

import base64
import hashlib

from broker_bridge.dynsec import (
    BRIDGE,
    BrokerState,
    config_file,
    device_acls,
    device_role,
    errors_of,
    hashed,
    plan_sync,
)


def test_device_role_names_only_its_own_topics() -> None:
    """No wildcard reaches another device; nothing is granted on up/ for receiving."""
    acls = device_acls("abc")
    assert {(a["acltype"], a["topic"]) for a in acls} == {
        ("publishClientSend", "devices/abc/up/#"),
        ("subscribePattern", "devices/abc/down/#"),
        ("publishClientReceive", "devices/abc/down/#"),
    }


def test_sync_plan_creates_missing_removes_revoked_and_unknown_and_is_idempotent() -> None:
    """Missing devices and services are created; revoked and unknown ones removed; admin kept."""
    broker = BrokerState(
        clients=frozenset({"admin", "keep", "revoked", "stranger"}),
        roles=frozenset(
            {"admin", device_role("keep"), device_role("revoked"), device_role("half"),
             device_role("stranger")}
        ),
    )  # fmt: skip
    active = {"keep": "pw1", "half": "pw2", "new": "pw3"}
    plan = plan_sync(active, ["revoked"], {BRIDGE: "bpw"}, broker)
    created = [c["username"] for c in plan.commands if c["command"] == "createClient"]
    deleted = [c["username"] for c in plan.commands if c["command"] == "deleteClient"]
    assert sorted(created) == [BRIDGE, "half", "new"]
    assert sorted(deleted) == ["revoked", "stranger"]
    assert {"command": "deleteRole", "rolename": device_role("half")} in plan.commands
    assert (plan.created, plan.removed) == (2, 2)
    assert not any(c.get("username") == "admin" for c in plan.commands)
    after = BrokerState(
        clients=frozenset({"admin", "keep", "half", "new", BRIDGE}),
        roles=frozenset({"admin", *(device_role(d) for d in active), "qnect-bridge"}),
    )
    again = plan_sync(active, ["revoked"], {BRIDGE: "bpw"}, after)
    assert (again.created, again.removed) == (0, 0)
    assert [c["command"] for c in again.commands] == ["setDefaultACLAccess"]


def test_idempotent_errors_are_not_failures() -> None:
    """'Already exists' and 'not found' are the state we asked for; anything else is an error."""
    responses = [
        {"command": "createClient", "error": "Client already exists"},
        {"command": "deleteRole", "error": "Role not found"},
        {"command": "createRole", "error": "Invalid rolename"},
    ]
    assert errors_of(responses) == ["createRole: Invalid rolename"]


def test_offline_file_hashes_like_mosquitto_and_denies_by_default() -> None:
    """PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt; defaults deny all but unsubscribe."""
    salt = bytes(range(12))
    entry = hashed("secret", salt)
    expected = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101, 64)
    assert entry == {
        "password": base64.b64encode(expected).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": 101,
    }
    doc = config_file("adm", {BRIDGE: "b"}, {"dev1": "d"}, bytes)
    assert doc["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    clients = {c["username"]: c for c in doc["clients"]}  # type: ignore[attr-defined]
    assert clients["dev1"]["clientid"] == "dev1"
    assert "clientid" not in clients[BRIDGE]
    admin_topics = {a["topic"] for r in doc["roles"] if r["rolename"] == "qnect-admin"  # type: ignore[attr-defined]
                    for a in r["acls"]}  # fmt: skip
    assert admin_topics == {"$CONTROL/dynamic-security/#"}  # no device data for the admin
