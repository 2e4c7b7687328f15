"""Operator routes for firmware and campaigns (real PostgreSQL).

Signature and sequence checks at upload, roles, campaign creation over a firmware range,
pause / resume / abort.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from crypto.firmware import (
    Manifest,
    artifact_digest,
    new_release_key,
    public_bytes,
    sign_manifest,
)
from crypto.keys import parse_root_key
from device_registry.model import RegistryKeys
from device_registry.postgres import provision
from qnect.api_server import build_app
from qnect.settings import Settings
from qnect.settings_api import ApiSettings
from tests.api.home import bearer, login, staff
from tests.fix_mqtt import Broker

RELEASE = new_release_key()
IMAGE = bytes(range(256)) * 8


def signed_body(
    version: str,
    seq: int,
    *,
    key: Any = RELEASE,
    image: bytes = IMAGE,
    models: tuple[str, ...] = ("plug",),
) -> dict[str, str]:
    """An upload body for *image* signed by *key*."""
    m = Manifest(version, seq, models, "1.0.0", len(image), artifact_digest(image))
    s = sign_manifest(key, m)
    return {
        "manifest": base64.b64encode(s.blob).decode(),
        "signature": base64.b64encode(s.signature).decode(),
        "content": base64.b64encode(image).decode(),
    }


@pytest.fixture(scope="module")
def client(db_dsn: str, root_key_file: Path, broker: Broker) -> Iterator[TestClient]:
    """The API in process, trusting RELEASE."""
    settings = Settings(
        database_url=SecretStr(db_dsn),
        root_key_file=root_key_file,
        mqtt_url=broker.url,
        ota_release_pubkey=public_bytes(RELEASE).hex(),
    )
    with TestClient(build_app(settings, ApiSettings())) as c:
        yield c


@pytest.fixture(scope="module")
def operator(client: TestClient, db_dsn: str, root_key_file: Path) -> dict[str, str]:
    """Bearer header of an operator."""
    staff(db_dsn, parse_root_key(root_key_file.read_text()), "olga", "operator")
    return bearer(login(client, "olga")["access_token"])


def test_upload_verifies_signature_digest_and_sequence(
    client: TestClient, operator: dict[str, str], db_dsn: str, root_key_file: Path
) -> None:
    """Good uploads are stored; another key, a changed image or a non-increasing seq: 422."""
    first = client.post("/v1/firmware", json=signed_body("2.0.0", 10), headers=operator)
    assert first.status_code == 201, first.text
    art = first.json()
    assert (art["version"], art["seq"], art["size"]) == ("2.0.0", 10, len(IMAGE))
    assert art["sha256"] == artifact_digest(IMAGE).hex()

    def refused(body: dict[str, str]) -> str:
        answer = client.post("/v1/firmware", json=body, headers=operator)
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        return str(answer.json()["detail"]["reason"])

    assert refused(signed_body("2.1.0", 11, key=new_release_key())) == "bad_signature"
    tampered = signed_body("2.1.0", 11)
    tampered["content"] = base64.b64encode(IMAGE[:-1] + b"\0").decode()
    assert refused(tampered) == "digest_mismatch"
    assert refused(signed_body("2.1.0", 9)) == "seq_not_increasing"  # lower
    assert refused(signed_body("2.1.0", 10)) == "seq_not_increasing"  # equal
    assert refused(signed_body("2.0.0", 12)) == "version_exists"
    # Another model line has its own sequence.
    other = client.post(
        "/v1/firmware", json=signed_body("5.0.0", 1, models=("scale",)), headers=operator
    )
    assert other.status_code == 201, other.text
    listed = client.get("/v1/firmware", headers=operator).json()
    assert [a["version"] for a in listed] == ["5.0.0", "2.0.0"]
    assert client.get(f"/v1/firmware/{art['artifact_id']}", headers=operator).json() == art
    assert client.get("/v1/firmware/999999", headers=operator).status_code == 404
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM firmware_artifacts").fetchone()
    assert row == (2,)


def test_only_operators_use_the_routes(
    client: TestClient, db_dsn: str, root_key_file: Path
) -> None:
    """No token: 401; support staff: 403."""
    assert client.get("/v1/firmware").status_code == 401
    staff(db_dsn, parse_root_key(root_key_file.read_text()), "sam", "support")
    support = bearer(login(client, "sam")["access_token"])
    assert client.get("/v1/campaigns", headers=support).status_code == 403
    answer = client.post("/v1/firmware", json=signed_body("3.0.0", 20), headers=support)
    assert answer.status_code == 403


def test_campaign_targets_a_firmware_range_and_changes_status(
    client: TestClient, operator: dict[str, str], db_dsn: str, root_key_file: Path
) -> None:
    """Only plugs on 1.x are targeted, cut into waves; pause/resume/abort; 409 and 404."""
    keys = RegistryKeys.from_root_key(parse_root_key(root_key_file.read_text()))
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        plugs = [c.device_id for c in provision(conn, keys, "plug", 30)]
        fw = ["1.4.2"] * 20 + ["0.9.0"] * 5 + ["3.0.0"] * 5  # 20 in range
        conn.execute(
            "INSERT INTO device_state (device_id, firmware) SELECT * FROM unnest(%s::text[], "
            "%s::text[])",
            (plugs, fw),
        )
    art = client.post("/v1/firmware", json=signed_body("2.5.0", 30), headers=operator).json()
    body = {
        "name": "plugs 2.5",
        "artifact_id": art["artifact_id"],
        "model": "plug",
        "from_min": "1.0.0",
        "from_max": "1.9.9",
        "waves": [10, 50, 100],
        "failure_threshold": 0.1,
    }
    made = client.post("/v1/campaigns", json=body, headers=operator)
    assert made.status_code == 201, made.text
    c = made.json()
    assert (c["status"], c["devices"], c["current_wave"]) == ("running", 20, 0)
    assert [sum(w.values()) for w in c["by_wave"]] == [2, 8, 10]
    cid = c["campaign_id"]
    # The same devices cannot join a second unfinished campaign.
    again = client.post("/v1/campaigns", json=body, headers=operator).json()
    assert again["devices"] == 0
    bad = client.post("/v1/campaigns", json={**body, "waves": [50, 10]}, headers=operator)
    assert bad.status_code == 422
    wrong = client.post("/v1/campaigns", json={**body, "model": "scale"}, headers=operator)
    assert wrong.json()["detail"]["reason"] == "model_not_in_manifest"

    def act(action: str) -> Any:
        return client.post(f"/v1/campaigns/{cid}/{action}", headers=operator)

    assert act("pause").json()["status"] == "paused"
    assert act("pause").status_code == 409
    assert act("resume").json()["status"] == "running"
    aborted = act("abort").json()
    assert aborted["status"] == "aborted"
    assert aborted["states"] == {"cancelled": 20}
    assert act("resume").status_code == 409
    assert client.get("/v1/campaigns/999999", headers=operator).status_code == 404
    listed = client.get("/v1/campaigns", headers=operator).json()
    assert {x["campaign_id"] for x in listed} >= {cid}
