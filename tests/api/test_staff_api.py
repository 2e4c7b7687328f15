"""Operator, support and DPO routes against the real database and a dynamic-security broker.

Provisioning pushes identities to a real Mosquitto (``secure_broker``) and returns credentials
once; revocation removes them; quarantine, support and DPO reads go through the purpose rules
and leave audit events with the caller's reason; wrong roles, unknown and hostile ids are
refused without a 5xx.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from crypto.keys import parse_root_key
from device_registry.model import RegistryKeys
from qnect.api_server import build_app
from qnect.settings import Settings
from qnect.settings_api import ApiSettings
from tests.api.home import Member, bearer, deny_events, login, new_member, staff
from tests.fix_mqtt import SecureBroker

REASON = "TICKET-4711"


@pytest.fixture(scope="module")
def root_key(root_key_file: Path) -> bytes:
    """The module's root key."""
    return parse_root_key(root_key_file.read_text())


@pytest.fixture(scope="module")
def keys(root_key: bytes) -> RegistryKeys:
    """Registry keys of the module's root key."""
    return RegistryKeys.from_root_key(root_key)


@pytest.fixture(scope="module")
def client(db_dsn: str, root_key_file: Path, secure_broker: SecureBroker) -> Iterator[TestClient]:
    """The API in process, keeping a dynamic-security Mosquitto in step."""
    settings = Settings(
        database_url=SecretStr(db_dsn),
        root_key_file=root_key_file,
        mqtt_url=secure_broker.url,
        broker_dynsec=True,
    )
    with TestClient(build_app(settings, ApiSettings())) as c:
        yield c


@pytest.fixture(scope="module")
def tokens(db_dsn: str, root_key: bytes, client: TestClient) -> dict[str, dict[str, str]]:
    """A bearer header per staff role."""
    out = {}
    for role in ("operator", "support", "dpo", "analyst"):
        staff(db_dsn, root_key, f"{role}-1", role)
        out[role] = bearer(login(client, f"{role}-1")["access_token"])
    return out


@pytest.fixture(scope="module")
def member(db_dsn: str, keys: RegistryKeys, root_key: bytes) -> Member:
    """A household with a plug."""
    return new_member(db_dsn, keys, root_key, "paula", models=("plug",))


def _account(dsn: str, username_role: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT account_id FROM accounts WHERE role = %s ORDER BY created_at LIMIT 1",
            (username_role,),
        ).fetchone()
    assert row is not None
    return str(row[0])


def _events(dsn: str, actor: str, **where: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT purpose, action, resource, decision, reason, fields, masked_fields, "
            "cardinality(subject_refs) FROM audit_events WHERE actor_id = %s ORDER BY seq",
            (actor,),
        ).fetchall()
    keys = ("purpose", "action", "resource", "decision", "reason", "fields", "masked", "subjects")
    events = [dict(zip(keys, r, strict=True)) for r in rows]
    return [e for e in events if all(e[k] == v for k, v in where.items())]


def test_provision_pushes_identities_and_revocation_removes_them(
    db_dsn: str, client: TestClient, tokens: dict[str, dict[str, str]], secure_broker: SecureBroker
) -> None:
    """Batch provisioning returns credentials once and creates them at the broker; revoke."""
    op = tokens["operator"]
    answer = client.post("/v1/ops/devices/batch", json={"model": "plug", "count": 3}, headers=op)
    assert answer.status_code == 201, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["broker_synced"] is True
    ids = [d["device_id"] for d in body["devices"]]
    assert len(ids) == 3
    with secure_broker.admin() as admin:
        assert set(ids) <= admin.state().clients
    secrets = [bytes.fromhex(d["root_key"]) for d in body["devices"]]
    with psycopg.connect(db_dsn) as conn:
        stored = conn.execute(
            "SELECT root_key_wrapped FROM devices WHERE device_id = ANY(%s)", (ids,)
        ).fetchall()
    assert len(stored) == 3
    assert all(key not in bytes(row[0]) for row in stored for key in secrets)
    assert all(d["mqtt_password"] not in str(stored) for d in body["devices"])

    for bad in ({"model": "toaster", "count": 1}, {"model": "plug", "count": 0}):
        assert client.post("/v1/ops/devices/batch", json=bad, headers=op).status_code == 422
    assert (
        client.post("/v1/ops/devices/batch", json={"model": "plug", "count": 501}, headers=op)
    ).status_code == 422

    gone = client.post(f"/v1/ops/devices/{ids[0]}/revoke", json={"reason": REASON}, headers=op)
    assert gone.status_code == 200, gone.text
    assert gone.json() == {"device_id": ids[0], "revoked": True, "disconnected": True}
    with secure_broker.admin() as admin:
        assert ids[0] not in admin.state().clients
    again = client.post(f"/v1/ops/devices/{ids[0]}/revoke", json={"reason": REASON}, headers=op)
    assert again.json()["revoked"] is False
    operator = _account(db_dsn, "operator")
    revokes = _events(db_dsn, operator, action="revoke")
    assert [(e["purpose"], e["reason"]) for e in revokes] == [("security", REASON)] * 2
    before = deny_events(db_dsn, operator)
    unknown = client.post(
        "/v1/ops/devices/aaaaaaaaaaaaaaaaaaaaaaaaaa/revoke", json={"reason": REASON}, headers=op
    )
    assert unknown.status_code == 404
    assert deny_events(db_dsn, operator) == before + 1
    assert client.post(f"/v1/ops/devices/{ids[1]}/revoke", json={}, headers=op).status_code == 422


def test_rotation_stage_and_progress(
    db_dsn: str, client: TestClient, tokens: dict[str, dict[str, str]]
) -> None:
    """Staging covers connected devices of the scope only; progress counts the run."""
    op = tokens["operator"]
    made = client.post("/v1/ops/devices/batch", json={"model": "cleaner", "count": 2}, headers=op)
    online, offline = (d["device_id"] for d in made.json()["devices"])
    with psycopg.connect(db_dsn, autocommit=True) as conn:  # what a key exchange leaves behind
        conn.execute("UPDATE devices SET current_epoch = 1 WHERE device_id = %s", (online,))
        conn.execute(
            "INSERT INTO device_sessions (device_id, epoch, device_nonce, server_nonce, cid, "
            "drk_version, established_at) VALUES (%s, 1, '\\x01', '\\x02', 1, 1, now())",
            (online,),
        )
        conn.execute(
            "INSERT INTO device_state (device_id, online, since, last_seen) "
            "VALUES (%s, true, now(), now())",
            (online,),
        )
    staged = client.post("/v1/ops/rotations", json={"models": ["cleaner"]}, headers=op)
    assert staged.status_code == 200, staged.text
    run = staged.json()
    assert (run["staged"], run["total"], run["pending"], run["rotated"]) == (1, 2, 1, 0)
    progress = client.get(
        "/v1/ops/rotations",
        params={"since": run["since"], "device_id": [online, offline]},
        headers=op,
    )
    assert progress.status_code == 200, progress.text
    assert (progress.json()["total"], progress.json()["pending"]) == (2, 1)
    assert client.post("/v1/ops/rotations", json={}, headers=op).status_code == 422
    bad = client.get("/v1/ops/rotations", params={"since": run["since"]}, headers=op)
    assert bad.status_code == 422


def test_quarantine_paged_by_reason_and_device_under_a_purpose(
    db_dsn: str, client: TestClient, tokens: dict[str, dict[str, str]], member: Member
) -> None:
    """Pages newest first, filters by reason and device, audits purpose and reason."""
    plug = member.devices["plug"]
    now = datetime.now(UTC)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for i in range(5):
            conn.execute(
                "INSERT INTO quarantine (digest, received_at, last_seen_at, device_id, kind, "
                "reason, detail, size) VALUES (%s, %s, %s, %s, 'telemetry', %s, 'x', 64)",
                (
                    uuid.uuid4().bytes * 2,
                    now - timedelta(minutes=i),
                    now,
                    plug if i % 2 == 0 else None,
                    "bad_tag" if i < 3 else "replayed",
                ),
            )
    op = tokens["operator"]
    url = "/v1/ops/quarantine"
    first = client.get(
        url, params={"purpose": "security", "reason": REASON, "limit": 2}, headers=op
    )
    assert first.status_code == 200, first.text
    page = first.json()
    assert len(page["rows"]) == 2
    assert page["next_before"] is not None
    rest = client.get(
        url,
        params={"purpose": "security", "reason": REASON, "before": page["next_before"]},
        headers=op,
    ).json()
    assert len(rest["rows"]) >= 3
    assert rest["next_before"] is None
    mine = client.get(
        url,
        params={
            "purpose": "security",
            "reason": REASON,
            "device_id": plug,
            "reject_reason": "bad_tag",
        },
        headers=op,
    ).json()["rows"]
    assert len(mine) == 2
    assert {r["device_id"] for r in mine} == {plug}
    assert "payload" not in mine[0]
    operator = _account(db_dsn, "operator")
    reads = _events(db_dsn, operator, resource="quarantine")
    assert reads[-1]["reason"] == REASON
    assert reads[-1]["purpose"] == "security"
    assert reads[-1]["subjects"] == 1  # the plug's owner, as a pseudonym
    before = deny_events(db_dsn, operator)
    refused = client.get(url, params={"purpose": "marketing", "reason": REASON}, headers=op)
    assert refused.status_code == 403
    assert deny_events(db_dsn, operator) == before + 1
    assert client.get(url, params={"purpose": "security"}, headers=op).status_code == 422
    stats = client.get("/v1/ops/stats", headers=op).json()
    assert stats["rejected"]["bad_tag"] >= 3
    assert stats["devices"]["active"] >= 1


def test_support_reads_a_device_and_an_account_masked_and_audited(
    db_dsn: str, client: TestClient, tokens: dict[str, dict[str, str]], member: Member
) -> None:
    """customer_support: e-mail and MAC masked, reason audited; unknown ids 404 + deny."""
    sup = tokens["support"]
    plug = member.devices["plug"]
    params = {"purpose": "customer_support", "reason": REASON}
    device = client.get(f"/v1/support/devices/{plug}", params=params, headers=sup)
    assert device.status_code == 200, device.text
    body = device.json()
    assert body["device"]["device_id"] == plug
    assert body["device"]["mac"].startswith("**:**:**:**:")
    assert body["account"]["email"] == "p***@x.test"
    assert "subject_id" not in body["account"]
    account = client.get(f"/v1/support/accounts/{member.subject}", params=params, headers=sup)
    assert account.status_code == 200
    assert [d["device_id"] for d in account.json()["devices"]] == [plug]
    support = _account(db_dsn, "support")
    reads = _events(db_dsn, support, purpose="customer_support", decision="partial")
    assert len(reads) == 4
    assert {e["reason"] for e in reads} == {REASON}
    assert all(e["subjects"] == 1 for e in reads)

    before = deny_events(db_dsn, support)
    missing = client.get(
        "/v1/support/devices/aaaaaaaaaaaaaaaaaaaaaaaaaa", params=params, headers=sup
    )
    assert missing.status_code == 404
    unknown = "u" + "0" * 24
    assert (
        client.get(f"/v1/support/accounts/{unknown}", params=params, headers=sup).status_code == 404
    )
    assert deny_events(db_dsn, support) == before + 2
    other = client.get(
        f"/v1/support/devices/{plug}", params={**params, "purpose": "security"}, headers=sup
    )
    assert other.status_code == 403
    assert client.get(f"/v1/support/devices/{plug}", headers=sup).status_code == 422


def test_dpo_audit_search_verify_record_and_request_queue(
    db_dsn: str,
    client: TestClient,
    tokens: dict[str, dict[str, str]],
    member: Member,
) -> None:
    """Audit search by subject/actor/purpose (paged), verification, Art. 30, DSR due dates."""
    dpo = tokens["dpo"]
    sup = tokens["support"]
    params = {"purpose": "customer_support", "reason": REASON}
    client.get(f"/v1/support/accounts/{member.subject}", params=params, headers=sup)
    support = _account(db_dsn, "support")
    ask = {"purpose": "legal_compliance", "reason": "DPO-1"}
    about = client.get(
        "/v1/dpo/audit", params={**ask, "subject_id": member.subject, "limit": 1}, headers=dpo
    )
    assert about.status_code == 200, about.text
    page = about.json()
    assert len(page["rows"]) == 1
    assert page["next"] is not None
    assert page["rows"][0]["actor_id"] == support
    older = client.get(
        "/v1/dpo/audit",
        params={**ask, "subject_id": member.subject, "before": page["next"]},
        headers=dpo,
    ).json()
    assert all(r["seq"] < page["rows"][0]["seq"] for r in older["rows"])
    by_actor = client.get(
        "/v1/dpo/audit",
        params={**ask, "actor_id": support, "for_purpose": "customer_support"},
        headers=dpo,
    ).json()["rows"]
    assert by_actor
    assert {r["purpose"] for r in by_actor} == {"customer_support"}
    assert {r["reason"] for r in by_actor} == {REASON}
    window = {"since": "2000-01-01T00:00:00Z", "until": "2000-01-02T00:00:00Z"}
    assert client.get("/v1/dpo/audit", params={**ask, **window}, headers=dpo).json()["rows"] == []
    dpo_id = _account(db_dsn, "dpo")
    assert _events(db_dsn, dpo_id, resource="audit_events")[-1]["reason"] == "DPO-1"

    verified = client.post("/v1/dpo/audit/verify", headers=dpo)
    assert verified.status_code == 200
    assert verified.json()["ok"] is True
    assert verified.json()["checked_rows"] >= 1

    record = client.get("/v1/dpo/record-of-processing", headers=dpo).json()
    bases = {a["purpose"]: a["legal_basis"] for a in record["activities"]}
    assert bases["marketing"] == "consent"
    assert bases["legal_compliance"] == "legal_obligation"
    health = record["categories"]["user.health_and_medical"]
    assert health["encrypted"] is True
    assert health["retention"] == ["365 days"]

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO dsr_requests (request_id, subject_id, kind, received_at, due_at) VALUES "
            "(%s, %s, 'export', now() - interval '40 days', now() - interval '10 days'), "
            "(%s, %s, 'erase', now(), now() + interval '30 days')",
            ("r" + "1" * 24, member.subject, "r" + "2" * 24, member.subject),
        )
    overdue = client.get("/v1/dpo/requests", params={**ask, "state": "overdue"}, headers=dpo)
    assert overdue.status_code == 200, overdue.text
    rows = overdue.json()["rows"]
    assert [r["request_id"] for r in rows] == ["r" + "1" * 24]
    assert rows[0]["overdue"] is True
    assert rows[0]["subject_id"] == member.subject
    queue = client.get("/v1/dpo/requests", params={**ask, "limit": 1}, headers=dpo).json()
    assert queue["next"] == "r" + "1" * 24
    nxt = client.get(
        "/v1/dpo/requests", params={**ask, "limit": 1, "after": queue["next"]}, headers=dpo
    ).json()
    assert nxt["rows"][0]["request_id"] == "r" + "2" * 24


def test_roles_and_hostile_ids(
    db_dsn: str, keys: RegistryKeys, root_key: bytes, client: TestClient, tokens: dict[str, Any]
) -> None:
    """No token 401, wrong role 403, hostile ids 404/422: never a 5xx."""
    user = new_member(db_dsn, keys, root_key, "ursula")
    mine = bearer(login(client, user.username)["access_token"])
    q = "?purpose=security&reason=TICKET-1"
    lq = "?purpose=legal_compliance&reason=TICKET-1"
    routes = {
        "operator": [
            ("POST", "/v1/ops/devices/batch"),
            ("POST", "/v1/ops/rotations"),
            ("GET", "/v1/ops/rotations?since=2026-01-01T00:00:00Z&all=true"),
            ("POST", "/v1/ops/devices/aaaaaaaaaaaaaaaaaaaaaaaaaa/revoke"),
            ("GET", "/v1/ops/quarantine" + q),
            ("GET", "/v1/ops/stats"),
        ],
        "support": [
            ("GET", "/v1/support/devices/aaaaaaaaaaaaaaaaaaaaaaaaaa" + q),
            ("GET", f"/v1/support/accounts/{user.subject}" + q),
        ],
        "dpo": [
            ("GET", "/v1/dpo/audit" + q),
            ("POST", "/v1/dpo/audit/verify"),
            ("GET", "/v1/dpo/record-of-processing"),
            ("GET", "/v1/dpo/requests" + q),
        ],
    }
    for role, calls in routes.items():
        wrong = [h for r, h in tokens.items() if r != role] + [mine]
        for method, url in calls:
            assert client.request(method, url).status_code == 401, url
            for headers in wrong:
                assert client.request(method, url, headers=headers).status_code == 403, url
    hostile = ["' OR 1=1 --", "1;DROP TABLE devices", "%00", "..%2F..%2Fetc", "A" * 65, "é"]
    for bad in hostile:
        for method, url, role in (
            ("GET", f"/v1/support/devices/{bad}{q}", "support"),
            ("GET", f"/v1/support/accounts/{bad}{q}", "support"),
            ("POST", f"/v1/ops/devices/{bad}/revoke", "operator"),
            ("GET", f"/v1/ops/quarantine{q}&device_id={bad}", "operator"),
            ("GET", f"/v1/dpo/audit{lq}&subject_id={bad}", "dpo"),
            ("GET", f"/v1/dpo/audit{lq}&actor_id={bad}", "dpo"),  # a filter: may match none
        ):
            answer = client.request(method, url, headers=tokens[role], json={"reason": REASON})
            allowed = {200, 422} if "actor_id" in url else {404, 422}
            assert answer.status_code in allowed, (url, answer.status_code)
