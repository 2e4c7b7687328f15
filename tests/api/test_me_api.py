"""The mobile app's routes, and the IDOR suite (another household's ids: 404 + deny event).

Devices, state and shadow, history, pairing, consents and rights, against the real database
and a real `qnect api` process. Delivery of the desired state to a device (by the bridge
workers, sealed) is tested end to end in ``tests/broker_bridge/test_desired.py``.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.tokens import SIGNING_INFO, AccessTokens, Principal, Role, derive_key
from crypto.keys import parse_root_key
from device_registry.model import RegistryKeys
from qnect.api_server import build_app
from qnect.settings import Settings
from qnect.settings_api import ApiSettings
from tests.api.home import Member, bearer, deny_events, login, new_member, staff
from tests.fix_bridge import api_process


@pytest.fixture(scope="module")
def root_key(root_key_file: Path) -> bytes:
    """The module's root key."""
    return parse_root_key(root_key_file.read_text())


@pytest.fixture(scope="module")
def keys(root_key: bytes) -> RegistryKeys:
    """Registry keys of the module's root key."""
    return RegistryKeys.from_root_key(root_key)


@pytest.fixture(scope="module")
def client(db_dsn: str, root_key_file: Path) -> Iterator[TestClient]:
    """The API in process (it needs no broker: the bridge workers send desired states)."""
    settings = Settings(database_url=SecretStr(db_dsn), root_key_file=root_key_file)
    with TestClient(build_app(settings, ApiSettings())) as c:
        yield c


@pytest.fixture(scope="module")
def alice(db_dsn: str, keys: RegistryKeys, root_key: bytes) -> Member:
    """Household A: a thermostat and a plug."""
    return new_member(db_dsn, keys, root_key, "alice", models=("thermostat", "plug"))


@pytest.fixture(scope="module")
def bob(db_dsn: str, keys: RegistryKeys, root_key: bytes) -> Member:
    """Household B: a thermostat."""
    return new_member(db_dsn, keys, root_key, "bob")


def token(client: TestClient, member: Member) -> dict[str, str]:
    """Bearer header for a member."""
    return bearer(login(client, member.username)["access_token"])


def report(dsn: str, device_id: str, latest: dict[str, object], *, online: bool = True) -> None:
    """What the ingest path writes for a device's latest state."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO device_state (device_id, online, since, last_seen, last_ts, latest, "
            "firmware) VALUES (%s, %s, now(), now(), now(), %s, '1.2.3') "
            "ON CONFLICT (device_id) DO UPDATE SET "
            "latest = device_state.latest || excluded.latest, online = excluded.online",
            (device_id, online, json.dumps(latest)),
        )


def test_devices_state_and_shadow(db_dsn: str, client: TestClient, alice: Member) -> None:
    """List, state, PATCH desired with If-Match/version (409/412/428), confirmation by report."""
    me = token(client, alice)
    thermostat = alice.devices["thermostat"]
    report(db_dsn, thermostat, {"temperature_c": 215, "setpoint_c": 200, "mode": "heat"})
    listed = client.get("/v1/me/devices", headers=me).json()
    assert {d["device_id"] for d in listed} == set(alice.devices.values())
    assert {d["model"] for d in listed} == {"thermostat", "plug"}
    assert next(d for d in listed if d["device_id"] == thermostat)["firmware"] == "1.2.3"

    state = client.get(f"/v1/me/devices/{thermostat}", headers=me)
    assert state.status_code == 200
    assert state.json()["reported"]["temperature_c"] == 21.5
    assert state.json()["online"] is True
    assert state.headers["ETag"] == '"0"'

    url = f"/v1/me/devices/{thermostat}/desired"
    patch: dict[str, Any] = {"desired": {"setpoint_c": 22.5, "mode": "heat"}}
    assert client.patch(url, json=patch, headers=me).status_code == 428
    done = client.patch(url, json=patch, headers={**me, "If-Match": '"0"'})
    assert done.status_code == 200, done.text
    assert done.json() == {
        "device_id": thermostat,
        "version": 1,
        "desired": {"setpoint_c": 22.5, "mode": "heat"},
    }
    assert done.headers["ETag"] == '"1"'
    stale = client.patch(url, json=patch, headers={**me, "If-Match": '"0"'})
    assert stale.status_code == 412
    assert stale.json()["detail"] == {"version": 1}
    assert client.patch(url, json={**patch, "version": 0}, headers=me).status_code == 409
    refused: list[dict[str, Any]] = [
        {"desired": {"temperature_c": 20}},  # a measurement, not a setting
        {"desired": {"setpoint_c": 99}},  # out of range
        {"desired": {"setpoint_c": 21.25}},  # off the step grid
        {"desired": {"mode": "turbo"}},
    ]
    for body in refused:
        answer = client.patch(url, json={**body, "version": 1}, headers=me)
        assert answer.status_code == 422, body
    with psycopg.connect(db_dsn) as conn:  # stored as wire values, for the workers to send
        row = conn.execute(
            "SELECT desired, version FROM device_shadows WHERE device_id = %s", (thermostat,)
        ).fetchone()
    assert row == ({"setpoint_c": 225, "mode": "heat"}, 1)
    shadow = client.get(f"/v1/me/devices/{thermostat}", headers=me).json()
    assert shadow["desired"] == {"setpoint_c": 22.5, "mode": "heat"}
    assert shadow["confirmed_at"] is None
    report(db_dsn, thermostat, {"setpoint_c": 225})
    confirmed = client.get(f"/v1/me/devices/{thermostat}", headers=me).json()
    assert confirmed["confirmed_at"] is not None
    assert confirmed["version"] == 1


def test_history_in_buckets(db_dsn: str, client: TestClient, alice: Member) -> None:
    """Hourly buckets of a plain point; ranges, points and buckets are validated."""
    me = token(client, alice)
    plug = alice.devices["plug"]
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        # Readings before the pairing are not the owner's: pretend it was paired yesterday.
        conn.execute(
            "UPDATE bindings SET bound_at = now() - interval '1 day' WHERE device_id = %s", (plug,)
        )
        for i, value in enumerate((10.0, 20.0, 30.0, 50.0)):
            conn.execute(
                "INSERT INTO telemetry (ts, device_id, point, value) VALUES (%s, %s, 1, %s)",
                (hour + timedelta(minutes=20 * i), plug, value),
            )
    url = f"/v1/me/devices/{plug}/history"
    params = {"point": "power_w", "bucket": "1h", "since": (hour - timedelta(hours=1)).isoformat()}
    answer = client.get(url, params=params, headers=me)
    assert answer.status_code == 200, answer.text
    buckets = answer.json()["buckets"]
    assert [(b["count"], b["avg"], b["min"], b["max"]) for b in buckets] == [
        (3, 20.0, 10.0, 30.0),
        (1, 50.0, 50.0, 50.0),
    ]
    bad = [
        {"point": "voltage_x"},
        {"point": "power_w", "bucket": "1w"},
        {"point": "power_w", "bucket": "1m", "since": "2020-01-01T00:00:00Z"},
        {"point": "power_w", "since": "2030-01-01T00:00:00Z"},
        {"point": "power_w", "since": "2026-01-01T00:00:00"},  # naive time
    ]
    for query in bad:
        assert client.get(url, params=query, headers=me).status_code == 422, query


def test_pairing_consents_and_rights(
    db_dsn: str, keys: RegistryKeys, root_key: bytes, client: TestClient
) -> None:
    """Pairing token, consents, export, restriction and erasure (with re-authentication)."""
    carol = new_member(db_dsn, keys, root_key, "carol", models=("scale",))
    me = token(client, carol)
    issued = client.post("/v1/me/pairing-tokens", headers=me)
    assert issued.status_code == 201
    assert issued.json()["household_id"] == carol.household
    assert (
        client.put("/v1/me/consents/health", json={"granted": True}, headers=me).status_code == 204
    )
    assert (
        client.put("/v1/me/consents/marketing", json={"granted": False}, headers=me).status_code
        == 204
    )
    consents = {c["key"]: c["state"] for c in client.get("/v1/me/consents", headers=me).json()}
    assert consents == {"health": "granted", "marketing": "withdrawn"}
    assert (
        client.put("/v1/me/consents/spying", json={"granted": True}, headers=me).status_code == 422
    )

    export = client.post("/v1/me/export", headers=me).json()
    assert export["export"]["subject_id"] == carol.subject
    status = client.get(f"/v1/me/requests/{export['request_id']}", headers=me).json()
    assert (status["kind"], status["status"]) == ("export", "done")
    restricted = client.put("/v1/me/restriction", json={"restricted": True}, headers=me)
    assert restricted.status_code == 200
    assert client.get("/v1/me/devices", headers=me).json() == []  # Art. 18: withheld
    client.put("/v1/me/restriction", json={"restricted": False}, headers=me)

    wrong = client.post(
        "/v1/me/erasure", json={"confirm": "erase-my-data", "password": "not it at all"}, headers=me
    )
    assert wrong.status_code == 403
    assert client.post("/v1/me/erasure", json={"password": "x"}, headers=me).status_code == 422
    erased = client.post(
        "/v1/me/erasure",
        json={"confirm": "erase-my-data", "password": "correct horse battery staple"},
        headers=me,
    )
    assert erased.status_code == 200
    assert erased.json()["status"] == "done"
    with psycopg.connect(db_dsn) as conn:
        left = conn.execute(
            "SELECT count(*) FROM accounts WHERE account_id = %s", (carol.account,)
        ).fetchone()
    assert left == (0,)
    assert client.get("/v1/me/devices", headers=me).status_code == 404  # token outlived the subject
    refused = client.post("/v1/auth/token", data={"username": "carol", "password": "x" * 12})
    assert refused.status_code == 401


def test_idor_suite(
    db_dsn: str, root_key: bytes, client: TestClient, alice: Member, bob: Member
) -> None:
    """Every route with a device or request id: B's ids give A 404 and a deny audit event."""
    me = token(client, alice)
    theirs = bob.devices["thermostat"]
    bobs_request = client.post("/v1/me/export", headers=token(client, bob)).json()["request_id"]
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/v1/me/devices/{theirs}", {}),
        (
            "PATCH",
            f"/v1/me/devices/{theirs}/desired",
            {"json": {"desired": {"mode": "off"}, "version": 0}},
        ),
        ("GET", f"/v1/me/devices/{theirs}/history", {"params": {"point": "temperature_c"}}),
        ("DELETE", f"/v1/me/devices/{theirs}", {}),
        ("GET", f"/v1/me/requests/{bobs_request}", {}),
    ]
    for method, url, extra in calls:
        before = deny_events(db_dsn, alice.account)
        answer = client.request(method, url, headers=me, **extra)
        assert answer.status_code == 404, (method, url, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert theirs not in answer.text
        assert bobs_request not in answer.text
        assert deny_events(db_dsn, alice.account) == before + 1, (method, url)
    # An unknown (unprovisioned) id is answered and audited the same way.
    before = deny_events(db_dsn, alice.account)
    assert client.get("/v1/me/devices/aaaaaaaaaaaaaaaaaaaaaaaaaa", headers=me).status_code == 404
    assert deny_events(db_dsn, alice.account) == before + 1
    # Bob's device is untouched.
    with psycopg.connect(db_dsn) as conn:
        owner = conn.execute(
            "SELECT subject_id FROM bindings WHERE device_id = %s AND unbound_at IS NULL",
            (theirs,),
        ).fetchone()
    assert owner == (bob.subject,)

    routes = [
        ("GET", "/v1/me/devices"),
        ("GET", f"/v1/me/devices/{theirs}"),
        ("PATCH", f"/v1/me/devices/{theirs}/desired"),
        ("GET", f"/v1/me/devices/{theirs}/history?point=power_w"),
        ("DELETE", f"/v1/me/devices/{theirs}"),
        ("POST", "/v1/me/pairing-tokens"),
        ("GET", "/v1/me/consents"),
        ("PUT", "/v1/me/consents/marketing"),
        ("POST", "/v1/me/export"),
        ("PUT", "/v1/me/restriction"),
        ("POST", "/v1/me/erasure"),
        ("GET", f"/v1/me/requests/{bobs_request}"),
    ]
    staff(db_dsn, root_key, "stan", "operator")
    operator = bearer(login(client, "stan")["access_token"])
    signer = AccessTokens(derive_key(root_key, SIGNING_INFO), ttl_s=60)
    expired = bearer(
        signer.issue(
            Principal(alice.account, frozenset({Role.USER}), alice.subject),
            now=datetime.now(UTC) - timedelta(minutes=2),
            token_id="x",
        )
    )
    for method, url in routes:
        assert client.request(method, url).status_code == 401, url
        assert client.request(method, url, headers=expired).status_code == 401, url
        assert client.request(method, url, headers=operator).status_code == 403, url
    hostile = ["' OR 1=1 --", "1;DROP TABLE devices", "%00", "..%2F..%2Fetc", "A" * 65, "é"]
    for bad in hostile:
        for path in (
            f"/v1/me/devices/{bad}",
            f"/v1/me/devices/{bad}/history?point=power_w",
            f"/v1/me/requests/{bad}",
        ):
            answer = client.get(path, headers=me)
            assert answer.status_code in {404, 422}, (path, answer.status_code)


def test_real_qnect_api_process(
    db_dsn: str, root_key_file: Path, keys: RegistryKeys, root_key: bytes
) -> None:
    """`qnect api` as a process: login, my devices, refusal of a foreign device."""
    dave = new_member(db_dsn, keys, root_key, "dave")
    erin = new_member(db_dsn, keys, root_key, "erin")
    env = dict(
        os.environ,
        QNECT_DATABASE_URL=db_dsn,
        QNECT_ROOT_KEY_FILE=str(root_key_file),
    )
    with api_process(env) as api:
        form = b"username=dave&password=correct+horse+battery+staple"
        request = urllib.request.Request(f"{api}/v1/auth/token", data=form)  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            access = json.loads(answer.read())["access_token"]
        mine = urllib.request.Request(f"{api}/v1/me/devices", headers=bearer(access))  # noqa: S310
        with urllib.request.urlopen(mine, timeout=10) as answer:  # noqa: S310
            assert [d["device_id"] for d in json.loads(answer.read())] == [
                dave.devices["thermostat"]
            ]
        foreign = urllib.request.Request(  # noqa: S310
            f"{api}/v1/me/devices/{erin.devices['thermostat']}", headers=bearer(access)
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(foreign, timeout=10)  # noqa: S310
        assert refused.value.code == 404
        refused.value.close()
    assert deny_events(db_dsn, dave.account) == 1
