"""The MQTT auth hook, called exactly as EMQX 5, mosquitto-go-auth and VerneMQ call it.

Real PostgreSQL: devices are provisioned by the registry and revoked by its own function; the
app is the one ``qnect auth-hook`` serves (``build_app``), driven through Starlette's client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.auth_hook import MAX_CACHE_TTL_S, AuthHook, DeviceCache, broker_router
from crypto.broker_secrets import service_password
from crypto.keys import KekRing, parse_root_key
from crypto.mqtt_tokens import CLOCK_SKEW_S, mint
from device_registry.errors import RegistryUnavailable
from device_registry.model import RegistryKeys
from device_registry.postgres import provision
from device_registry.postgres_auth import PostgresAuthSource
from device_registry.postgres_identity import revoke_device
from qnect.cli_auth import build_app
from qnect.settings import Settings

FORM = {"content-type": "application/x-www-form-urlencoded"}


class Fleet:
    """Provisioned devices with their root keys, and the server root key."""

    def __init__(self, root: bytes, creds: list[dict[str, Any]]) -> None:
        self.root = root
        self.keys = {c["device_id"]: bytes.fromhex(c["root_key"]) for c in creds}
        self.ids = list(self.keys)

    def token(self, device_id: str, *, expires_in: int = 3600, version: int = 1) -> str:
        """A token as the device would mint it."""
        expires = int(time.time()) + expires_in
        return mint(self.keys[device_id], device_id, drk_version=version, expires_at=expires)

    def service(self, name: str) -> str:
        """A service identity's password."""
        return service_password(self.root, name)


@pytest.fixture(scope="module")
def fleet(db_dsn: str, root_key_file: Path) -> Fleet:
    """Twelve plugs provisioned through the registry."""
    root = parse_root_key(root_key_file.read_text())
    with psycopg.connect(db_dsn) as conn:
        creds = [c.to_json() for c in provision(conn, RegistryKeys.from_root_key(root), "plug", 12)]
    return Fleet(root, creds)


@pytest.fixture(scope="module")
def client(db_dsn: str, root_key_file: Path) -> Iterator[TestClient]:
    """The served app, with no device cache so each revocation is seen at once."""
    settings = Settings(database_url=SecretStr(db_dsn), root_key_file=root_key_file)
    with TestClient(build_app(settings, cache_ttl_s=0)) as c:
        yield c


def _revoke(dsn: str, device_id: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert revoke_device(conn, device_id)


# -- EMQX 5 ------------------------------------------------------------------------------------
def _emqx_authn(client: TestClient, user: str, password: str, cid: str | None = None) -> Any:
    body = {"username": user, "password": password, "clientid": cid or user}
    resp = client.post("/mqtt/emqx/authn", json=body)
    assert resp.status_code == 200  # EMQX reads any other status as "ignore"
    assert resp.headers["content-type"] == "application/json"
    return resp.json()


def _emqx_authz(client: TestClient, user: str, action: str, topic: str) -> str:
    body = {"username": user, "clientid": user, "action": action, "topic": topic, "qos": "1"}
    resp = client.post("/mqtt/emqx/authz", json=body)
    assert resp.status_code == 200
    return str(resp.json()["result"])


def test_emqx_allows_a_good_token_and_passes_its_expiry(client: TestClient, fleet: Fleet):
    """A device's fresh token is allowed, not as superuser, with expire_at = token expiry."""
    dev = fleet.ids[0]
    token = fleet.token(dev)
    answer = _emqx_authn(client, dev, token)
    assert answer == {
        "result": "allow",
        "is_superuser": False,
        "expire_at": int(token.split(".")[1]),
    }


def test_emqx_denies_wrong_passwords(client: TestClient, fleet: Fleet):
    """A token under another key, a garbage password and an empty one are all denied."""
    dev, other = fleet.ids[0], fleet.ids[1]
    forged = mint(fleet.keys[other], dev, drk_version=1, expires_at=int(time.time()) + 60)
    for password in (forged, "hunter2", "", fleet.service("bridge")):
        assert _emqx_authn(client, dev, password) == {"result": "deny", "is_superuser": False}


def test_emqx_denies_an_expired_token_but_honours_the_skew_window(client: TestClient, fleet: Fleet):
    """A token expired beyond the skew window is denied; one just expired is still allowed."""
    dev = fleet.ids[0]
    expired = fleet.token(dev, expires_in=-(CLOCK_SKEW_S + 60))
    assert _emqx_authn(client, dev, expired)["result"] == "deny"
    assert _emqx_authn(client, dev, fleet.token(dev, expires_in=-30))["result"] == "allow"


def test_emqx_denies_a_token_with_a_far_future_expiry(client: TestClient, fleet: Fleet):
    """A device cannot mint itself a week-long password."""
    dev = fleet.ids[0]
    assert _emqx_authn(client, dev, fleet.token(dev, expires_in=7 * 86400))["result"] == "deny"


def test_emqx_denies_an_unknown_root_key_version(client: TestClient, fleet: Fleet):
    """A token naming a root-key version the device does not have is denied."""
    dev = fleet.ids[0]
    assert _emqx_authn(client, dev, fleet.token(dev, version=2))["result"] == "deny"


def test_username_must_be_the_device_the_token_was_made_for(client: TestClient, fleet: Fleet):
    """Device A's valid token under username B, or an unknown username, is denied."""
    a, b = fleet.ids[0], fleet.ids[1]
    assert _emqx_authn(client, b, fleet.token(a))["result"] == "deny"
    assert _emqx_authn(client, "zzzzzzzzzzzzzzzz", fleet.token(a))["result"] == "deny"
    assert _emqx_authn(client, "nobody", fleet.token(a))["result"] == "deny"


def test_client_id_must_equal_the_device_id(client: TestClient, fleet: Fleet):
    """A device connecting under another device's client id (a session takeover) is denied."""
    a, b = fleet.ids[0], fleet.ids[1]
    assert _emqx_authn(client, a, fleet.token(a), cid=b)["result"] == "deny"
    assert _emqx_authn(client, a, fleet.token(a), cid="sim-" + a)["result"] == "deny"
    body = {"username": a, "password": fleet.token(a)}  # a broker that sends no client id
    assert client.post("/mqtt/emqx/authn", json=body).json()["result"] == "allow"


def test_emqx_acl_allows_own_topics_and_denies_other_devices(client: TestClient, fleet: Fleet):
    """A device publishes only to its own up and subscribes only to its own down."""
    a, b = fleet.ids[0], fleet.ids[1]
    assert _emqx_authz(client, a, "publish", f"devices/{a}/up/telemetry") == "allow"
    assert _emqx_authz(client, a, "subscribe", f"devices/{a}/down/#") == "allow"
    denied = [
        ("publish", f"devices/{b}/up/telemetry"),
        ("subscribe", f"devices/{b}/down/#"),
        ("publish", f"devices/{a}/down/cmd"),
        ("subscribe", f"devices/{a}/up/#"),
        ("subscribe", "devices/+/down/#"),
        ("subscribe", "#"),
        ("subscribe", "$share/ingest/devices/+/up/#"),
        ("publish", f"devices/{a}/up/#"),
        ("publish", f"devices/{a}x/up/telemetry"),
        ("publish", f"devices/{a}/up"),
        ("all", f"devices/{a}/up/telemetry"),
    ]
    for action, topic in denied:
        assert _emqx_authz(client, a, action, topic) == "deny", (action, topic)


def test_revoked_device_is_refused_at_connect_and_on_topics(
    client: TestClient, fleet: Fleet, db_dsn: str
):
    """After the registry revokes a device, its valid token and its own topics are refused."""
    dev = fleet.ids[2]
    token = fleet.token(dev)
    assert _emqx_authn(client, dev, token)["result"] == "allow"
    _revoke(db_dsn, dev)
    assert _emqx_authn(client, dev, token)["result"] == "deny"
    assert _emqx_authz(client, dev, "publish", f"devices/{dev}/up/telemetry") == "deny"
    verne = {"username": dev, "client_id": dev, "password": token, "mountpoint": ""}
    resp = client.post("/mqtt/vernemq/auth_on_register", json=verne)
    assert resp.json() == {"result": {"error": "not_allowed"}}
    go = {"username": dev, "password": token, "clientid": dev}
    assert client.post("/mqtt/go-auth/user", json=go).status_code == 403


def test_bridge_identity_authenticates_and_gets_only_its_topics(client: TestClient, fleet: Fleet):
    """The bridge logs in with its derived password; it reads uplink and writes downlink."""
    dev = fleet.ids[0]
    body = {"username": "bridge", "password": fleet.service("bridge"), "clientid": "bridge-0"}
    assert client.post("/mqtt/emqx/authn", json=body).json()["result"] == "allow"
    body["password"] = fleet.service("admin")
    assert client.post("/mqtt/emqx/authn", json=body).json()["result"] == "deny"
    body["password"], body["clientid"] = fleet.service("bridge"), dev  # device-shaped client id
    assert client.post("/mqtt/emqx/authn", json=body).json()["result"] == "deny"
    assert _emqx_authz(client, "bridge", "subscribe", "$share/ingest/devices/+/up/#") == "allow"
    assert _emqx_authz(client, "bridge", "subscribe", "devices/+/up/#") == "allow"
    assert _emqx_authz(client, "bridge", "publish", f"devices/{dev}/down/receipt") == "allow"
    assert _emqx_authz(client, "bridge", "publish", f"devices/{dev}/up/telemetry") == "deny"
    assert _emqx_authz(client, "bridge", "publish", "devices/+/down/receipt") == "deny"
    assert _emqx_authz(client, "bridge", "subscribe", "#") == "deny"


def test_admin_identity_authenticates_but_has_no_topics(client: TestClient, fleet: Fleet):
    """The admin identity logs in with its own password and may not touch device topics."""
    body = {"username": "admin", "password": fleet.service("admin"), "clientid": "qnect-admin"}
    assert client.post("/mqtt/emqx/authn", json=body).json()["result"] == "allow"
    dev = fleet.ids[0]
    assert _emqx_authz(client, "admin", "subscribe", "devices/+/up/#") == "deny"
    assert _emqx_authz(client, "admin", "publish", f"devices/{dev}/down/cmd") == "deny"
    body = {"username": "loadgen", "password": fleet.service("loadgen"), "clientid": "lg"}
    assert client.post("/mqtt/emqx/authn", json=body).json()["result"] == "deny"


# -- mosquitto-go-auth -------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["json", "form"])
def test_go_auth_user_check_answers_with_status(client: TestClient, fleet: Fleet, mode: str):
    """go-auth's getuser gets 200 for a good token and 403 for a bad one, JSON or form."""
    dev = fleet.ids[3]

    def post(password: str) -> Any:
        fields = {"username": dev, "password": password, "clientid": dev}
        if mode == "json":
            return client.post("/mqtt/go-auth/user", json=fields)
        return client.post("/mqtt/go-auth/user", data=fields, headers=FORM)

    good = post(fleet.token(dev))
    assert (good.status_code, good.json()) == (200, {"ok": True, "error": ""})
    bad = post(fleet.token(dev, expires_in=-3600))
    assert (bad.status_code, bad.json()) == (403, {"ok": False, "error": "denied"})


@pytest.mark.parametrize("mode", ["json", "form"])
def test_go_auth_acl_maps_acc_to_read_write_subscribe(client: TestClient, fleet: Fleet, mode: str):
    """Access 1 (read) and 4 (subscribe) allow own down, 2 (write) own up; others get 403."""
    a, b = fleet.ids[3], fleet.ids[4]

    def acl(topic: str, acc: int) -> int:
        fields: dict[str, Any] = {"username": a, "clientid": a, "topic": topic, "acc": acc}
        if mode == "json":
            return client.post("/mqtt/go-auth/acl", json=fields).status_code
        fields["acc"] = str(acc)
        return client.post("/mqtt/go-auth/acl", data=fields, headers=FORM).status_code

    assert acl(f"devices/{a}/down/cmd", 1) == 200
    assert acl(f"devices/{a}/up/telemetry", 2) == 200
    assert acl(f"devices/{a}/down/#", 4) == 200
    assert acl(f"devices/{a}/up/telemetry", 1) == 403
    assert acl(f"devices/{a}/down/cmd", 2) == 403
    assert acl(f"devices/{b}/down/cmd", 1) == 403
    assert acl(f"devices/{b}/up/telemetry", 2) == 403
    assert acl(f"devices/{b}/down/#", 4) == 403
    assert acl(f"devices/{a}/up/telemetry", 3) == 403  # no such single access


def test_go_auth_has_no_superusers(client: TestClient, fleet: Fleet):
    """The superuser check refuses every identity, the bridge included."""
    for user in ("bridge", "admin", fleet.ids[0]):
        assert client.post("/mqtt/go-auth/superuser", json={"username": user}).status_code == 403


def test_go_auth_malformed_bodies_are_problems_without_echo(client: TestClient, fleet: Fleet):
    """A repeated form field or broken JSON is a 400 problem that never repeats the input."""
    dev, token = fleet.ids[3], fleet.token(fleet.ids[3])
    form = f"username={dev}&password={token}&password=x&clientid={dev}"
    resp = client.post("/mqtt/go-auth/user", content=form, headers=FORM)
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["type"] == "urn:qnect:problem:malformed-request"
    assert token not in resp.text
    resp = client.post("/mqtt/go-auth/user", content=b'{"password": "' + token.encode())
    assert resp.status_code == 400
    assert token not in resp.text


# -- VerneMQ -----------------------------------------------------------------------------------
def _verne(client: TestClient, hook: str, body: dict[str, Any]) -> Any:
    resp = client.post(f"/mqtt/vernemq/{hook}", json=body, headers={"vernemq-hook": hook})
    assert resp.status_code == 200  # VerneMQ logs anything else as an error
    return resp.json()


@pytest.mark.parametrize("m5", [False, True])
def test_vernemq_register(client: TestClient, fleet: Fleet, m5: bool):
    """auth_on_register(_m5) answers ok for a good token, not_allowed for a bad one."""
    dev = fleet.ids[5]
    hook = "auth_on_register_m5" if m5 else "auth_on_register"
    body: dict[str, Any] = {
        "peer_addr": "127.0.0.1",
        "peer_port": 50123,
        "username": dev,
        "password": fleet.token(dev),
        "mountpoint": "",
        "client_id": dev,
    }
    body.update({"clean_start": True, "properties": {}} if m5 else {"clean_session": False})
    assert _verne(client, hook, body) == {"result": "ok"}
    body["password"] = fleet.token(fleet.ids[6])
    assert _verne(client, hook, body) == {"result": {"error": "not_allowed"}}
    body["password"] = None  # a client that sent no password
    assert _verne(client, hook, body) == {"result": {"error": "not_allowed"}}


def test_vernemq_publish_and_subscribe(client: TestClient, fleet: Fleet):
    """auth_on_publish and auth_on_subscribe allow own topics; one foreign filter refuses all."""
    a, b = fleet.ids[5], fleet.ids[6]
    pub = {"username": a, "client_id": a, "mountpoint": "", "qos": 1, "retain": False}
    pub |= {"topic": f"devices/{a}/up/telemetry", "payload": "aGVsbG8="}
    assert _verne(client, "auth_on_publish", pub) == {"result": "ok"}
    pub["topic"] = f"devices/{b}/up/telemetry"
    assert _verne(client, "auth_on_publish_m5", pub | {"properties": {}}) == {
        "result": {"error": "not_allowed"}
    }
    sub: dict[str, Any] = {"username": a, "client_id": a, "mountpoint": ""}
    sub["topics"] = [{"topic": f"devices/{a}/down/#", "qos": 1}]
    assert _verne(client, "auth_on_subscribe", sub) == {"result": "ok"}
    sub["topics"].append({"topic": f"devices/{b}/down/#", "qos": 1})
    assert _verne(client, "auth_on_subscribe_m5", sub) == {"result": {"error": "not_allowed"}}
    bridge = {"username": "bridge", "client_id": "bridge-1", "mountpoint": ""}
    bridge["topics"] = [{"topic": "$share/ingest/devices/+/up/#", "qos": 1}]  # type: ignore[assignment]
    assert _verne(client, "auth_on_subscribe", bridge) == {"result": "ok"}


# -- the app around the hook -------------------------------------------------------------------
def test_registry_outage_is_a_503_problem_every_broker_refuses(fleet: Fleet):
    """With PostgreSQL unreachable, device checks answer 503 problem+json with Retry-After."""
    source = PostgresAuthSource("postgresql://postgres@127.0.0.1:1/none", KekRing(fleet.root))
    hook = AuthHook(DeviceCache(source, ttl_s=0), {"bridge": fleet.service("bridge")})
    dev = fleet.ids[0]
    with TestClient(create_app(routers=[broker_router(hook)])) as c:
        resp = c.post("/mqtt/emqx/authn", json={"username": dev, "password": fleet.token(dev)})
        assert resp.status_code == 503
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.headers["retry-after"] == "1"
        assert resp.json()["type"] == "urn:qnect:problem:unavailable"
        body = {"username": "bridge", "password": fleet.service("bridge")}
        assert c.post("/mqtt/emqx/authn", json=body).json()["result"] == "allow"


def test_validation_errors_never_echo_a_password(client: TestClient):
    """A mistyped field gets a 422 problem naming the field, not repeating the value."""
    secret = "q1.1750000000.1.SECRETSECRETSECRETSECRE"
    resp = client.post("/mqtt/emqx/authn", json={"username": "a", "password": {"x": secret}})
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["detail"][0]["loc"] == ["body", "password"]
    assert "SECRET" not in resp.text


def test_healthz_and_openapi_document_every_broker_endpoint(client: TestClient):
    """/healthz answers; the OpenAPI lists each hook, go-auth with JSON and form bodies."""
    assert client.get("/healthz").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    paths = set(spec["paths"])
    for hook in ("register", "publish", "subscribe"):
        assert f"/mqtt/vernemq/auth_on_{hook}" in paths
        assert f"/mqtt/vernemq/auth_on_{hook}_m5" in paths
    assert {"/mqtt/emqx/authn", "/mqtt/emqx/authz", "/mqtt/go-auth/acl"} <= paths
    content = spec["paths"]["/mqtt/go-auth/user"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/x-www-form-urlencoded"}
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_decisions_are_logged_without_passwords(client: TestClient, fleet: Fleet):
    """Each connect decision is logged with its reason; no token or password appears."""
    dev = fleet.ids[7]
    token, bad = fleet.token(dev), fleet.token(dev, expires_in=-3600)
    with structlog.testing.capture_logs() as logs:
        _emqx_authn(client, dev, token)
        _emqx_authn(client, dev, bad)
        _emqx_authn(client, "not-one-of-ours", token)
    reasons = [(e["event"], e["reason"]) for e in logs if e["event"].startswith("auth_hook.")]
    assert reasons == [
        ("auth_hook.allowed", "ok"),
        ("auth_hook.denied", "token_expired"),
        ("auth_hook.denied", "unknown_identity"),
    ]
    text = repr(logs)
    assert token not in text
    assert bad not in text
    assert "not-one-of-ours" not in text


def test_cache_delays_revocation_by_at_most_its_ttl(db_dsn: str, fleet: Fleet):
    """A cached lookup hides a revocation only until the cache period ends."""
    now = [1000.0]
    dev = fleet.ids[8]
    with PostgresAuthSource(db_dsn, KekRing(fleet.root)) as source:
        cache = DeviceCache(source, ttl_s=MAX_CACHE_TTL_S, clock=lambda: now[0])
        found = cache.lookup(dev)
        assert found is not None
        assert found.active
        _revoke(db_dsn, dev)
        cached = cache.lookup(dev)
        assert cached is not None
        assert cached.active
        now[0] += MAX_CACHE_TTL_S
        after = cache.lookup(dev)
        assert after is not None
        assert not after.active
    with pytest.raises(ValueError, match="cache TTL"):
        DeviceCache(source, ttl_s=MAX_CACHE_TTL_S + 1)


def test_auth_source_reports_unknown_devices_and_reconnects(db_dsn: str, fleet: Fleet):
    """An unknown id is None; after the connection dies the next lookup reconnects."""
    with PostgresAuthSource(db_dsn, KekRing(fleet.root)) as source:
        assert source.lookup("zzzzzzzzzzzzzzzz") is None
        assert "postgres" not in repr(source)
        with psycopg.connect(db_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(RegistryUnavailable):
            source.lookup(fleet.ids[9])
        found = source.lookup(fleet.ids[9])
        assert found is not None
        assert set(found.root_keys(time.time())) == {1}
