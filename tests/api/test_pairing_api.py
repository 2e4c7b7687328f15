"""Device activation over HTTP (`qnect api`) with pairing tokens from `qnect pairing token`."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from crypto.keys import parse_root_key
from crypto.pairing import proof
from device_registry.model import RegistryKeys
from device_registry.postgres import provision
from privacy.postgres import create_household, create_subject
from qnect.api_server import build_app
from qnect.settings import Settings
from qnect.sim_activation import activate
from tests.fix_bridge import api_process, qnect_json


@pytest.fixture(scope="module")
def keys(root_key_file: Path) -> RegistryKeys:
    """Registry keys of the module's root key."""
    return RegistryKeys.from_root_key(parse_root_key(root_key_file.read_text()))


@pytest.fixture(scope="module")
def env(db_dsn: str, root_key_file: Path) -> dict[str, str]:
    """Environment for qnect commands."""
    return dict(
        os.environ,
        QNECT_DATABASE_URL=db_dsn,
        QNECT_ROOT_KEY_FILE=str(root_key_file),
        QNECT_BROKER_DYNSEC="false",
    )


@pytest.fixture(scope="module")
def client(db_dsn: str, root_key_file: Path) -> Iterator[TestClient]:
    """The API app in process (real database)."""
    settings = Settings(database_url=SecretStr(db_dsn), root_key_file=root_key_file)
    with TestClient(build_app(settings)) as c:
        yield c


def user(db_dsn: str, keys: RegistryKeys) -> tuple[str, str]:
    """A household with one user."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        household = create_household(conn)
        subject = create_subject(conn, keys.ring.kek(1), household, email="a@b.test", name=None)
    return household, subject


def new_device(db_dsn: str, keys: RegistryKeys) -> dict[str, Any]:
    """A provisioned device's credentials."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        return provision(conn, keys, "thermostat", 1)[0].to_json()


def body(creds: dict[str, Any], token: str, household: str, **over: Any) -> dict[str, Any]:
    """An activation request as the device builds it."""
    ts_ms = int(datetime.now(UTC).timestamp() * 1000)
    tag = proof(bytes.fromhex(creds["root_key"]), creds["device_id"], token, household, ts_ms)
    request = {
        "token": token,
        "household_id": household,
        "ts_ms": ts_ms,
        "proof": base64.urlsafe_b64encode(tag).decode().rstrip("="),
    }
    request.update(over)
    return request


def test_activation_over_http_with_distinct_refusals(
    db_dsn: str, keys: RegistryKeys, env: dict[str, str], client: TestClient
) -> None:
    """Good token → owned; reuse, expiry, wrong household: 403 with distinct reasons."""
    household, subject = user(db_dsn, keys)
    other_household, _ = user(db_dsn, keys)
    issued = qnect_json("pairing", "token", "--subject", subject, "--household", household, env=env)
    token = issued["token"]
    creds, second = new_device(db_dsn, keys), new_device(db_dsn, keys)
    url = f"/v1/devices/{creds['device_id']}/activate"

    wrong = client.post(url, json=body(creds, token, other_household))
    assert wrong.status_code == 403
    assert wrong.headers["content-type"] == "application/problem+json"
    assert wrong.json()["detail"] == {"reason": "pair_wrong_household"}
    assert token not in wrong.text

    good = client.post(url, json=body(creds, token, household))
    assert good.status_code == 200, good.text
    assert good.json() == {
        "device_id": creds["device_id"],
        "household_id": household,
        "operational_key": "offered_on_connect",
    }
    again = client.post(
        f"/v1/devices/{second['device_id']}/activate", json=body(second, token, household)
    )
    assert again.json()["detail"] == {"reason": "pair_token_used"}

    short = qnect_json(
        "pairing", "token", "--subject", subject, "--household", household, "--ttl", "1", env=env
    )["token"]
    time.sleep(1.2)
    expired = client.post(
        f"/v1/devices/{second['device_id']}/activate", json=body(second, short, household)
    )
    assert expired.json()["detail"] == {"reason": "pair_token_expired"}


def test_invalid_activation_requests_get_specific_errors(
    db_dsn: str, keys: RegistryKeys, client: TestClient
) -> None:
    """Malformed bodies and ids: 4xx problem answers that never echo the input."""
    creds = new_device(db_dsn, keys)
    url = f"/v1/devices/{creds['device_id']}/activate"
    good = body(creds, "qp1-" + "a" * 26, "h1")
    cases = [
        (url, {**good, "proof": "!!not-base64!!"}, 400),
        (url, {**good, "proof": "AAAA"}, 400),
        (url, {**good, "ts_ms": -1}, 422),
        (url, {**good, "extra": 1}, 422),
        (url, {k: v for k, v in good.items() if k != "token"}, 422),
        (url, {**good, "token": "x" * 65}, 422),
        ("/v1/devices/NOT_AN_ID/activate", good, 422),
        ("/v1/devices/' OR 1=1 --/activate", good, 422),
    ]
    for path, payload, status in cases:
        answer = client.post(path, json=payload)
        assert answer.status_code == status, (path, payload, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert "!!not-base64!!" not in answer.text
    unknown = client.post(url, json=good)
    assert unknown.status_code == 403
    assert unknown.json()["detail"] == {"reason": "pair_token_unknown"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert "/v1/devices/{device_id}/activate" in client.get("/openapi.json").json()["paths"]


def test_qnect_api_serves_a_real_device_activation(
    db_dsn: str, keys: RegistryKeys, env: dict[str, str]
) -> None:
    """`qnect api` as a process; the simulator's HTTP activation gets the device paired."""
    household, subject = user(db_dsn, keys)
    token = qnect_json("pairing", "token", "--subject", subject, "--household", household, env=env)
    creds = new_device(db_dsn, keys)
    with api_process(env) as api:
        status, answer = activate(api, creds, token["token"], household)
        assert (status, answer["operational_key"]) == (200, "offered_on_connect")
        status, answer = activate(api, creds, token["token"], household)
        assert (status, answer["detail"]["reason"]) == (403, "pair_token_used")
    with psycopg.connect(db_dsn) as conn:
        owner = conn.execute(
            "SELECT subject_id FROM bindings WHERE device_id = %s AND unbound_at IS NULL",
            (creds["device_id"],),
        ).fetchone()
    assert owner == (subject,)
