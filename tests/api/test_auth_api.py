"""Authentication: password grant, refresh rotation, logout, lockout, expiry, OIDC via JWKS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.tokens import SIGNING_INFO, AccessTokens, Principal, Role, derive_key
from crypto.keys import parse_root_key
from device_registry.model import RegistryKeys
from qnect.api_server import build_app
from qnect.settings import Settings
from qnect.settings_api import ApiSettings
from tests.api.home import PASSWORD, bearer, login, new_member, staff
from tests.fix_bridge import REPO

ISSUER = "http://127.0.0.1/test-issuer"
AUDIENCE = "qnect-test"


@pytest.fixture(scope="module")
def root_key(root_key_file: Path) -> bytes:
    """The module's root key."""
    return parse_root_key(root_key_file.read_text())


@pytest.fixture(scope="module")
def keys(root_key: bytes) -> RegistryKeys:
    """Registry keys of the module's root key."""
    return RegistryKeys.from_root_key(root_key)


@pytest.fixture(scope="module")
def issuer_key() -> rsa.RSAPrivateKey:
    """The external issuer's signing key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(issuer_key: rsa.RSAPrivateKey) -> Iterator[str]:
    """A JWKS endpoint on loopback serving the issuer's public key."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer_key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            del args

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="jwks", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def client(db_dsn: str, root_key_file: Path, jwks_url: str) -> Iterator[TestClient]:
    """The API in process, with the test issuer configured."""
    settings = Settings(database_url=SecretStr(db_dsn), root_key_file=root_key_file)
    api = ApiSettings(oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks_url=jwks_url)
    with TestClient(build_app(settings, api)) as c:
        yield c


def external(key: rsa.RSAPrivateKey, sub: str, roles: list[str], **over: Any) -> str:
    """A token of the external issuer."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 300}
    claims["roles"] = roles
    claims.update(over)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


def test_login_refresh_rotation_and_logout(
    db_dsn: str, keys: RegistryKeys, root_key: bytes, client: TestClient
) -> None:
    """Login gives ≤15 min tokens; refresh rotates; a replayed refresh revokes the family."""
    m = new_member(db_dsn, keys, root_key, "rita")
    first = login(client, "  RITA ")  # login names are normalised
    assert first["token_type"] == "bearer"
    assert 0 < first["expires_in"] <= 900
    assert first["roles"] == ["user"]
    claims = jwt.decode(first["access_token"], options={"verify_signature": False})
    assert claims["sub"] == m.account
    assert claims["exp"] - claims["iat"] <= 900
    assert client.get("/v1/me/devices", headers=bearer(first["access_token"])).status_code == 200

    second = client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    newer = second.json()["refresh_token"]
    assert newer != first["refresh_token"]
    replay = client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401
    # The replay revoked the family: the token issued by the rotation is dead too.
    assert client.post("/v1/auth/refresh", json={"refresh_token": newer}).status_code == 401

    again = login(client, "rita")
    assert (
        client.post("/v1/auth/logout", json={"refresh_token": again["refresh_token"]}).status_code
        == 204
    )
    gone = client.post("/v1/auth/refresh", json={"refresh_token": again["refresh_token"]})
    assert gone.status_code == 401
    with psycopg.connect(db_dsn) as conn:
        stored = conn.execute("SELECT token_hash FROM refresh_tokens").fetchall()
    assert all(again["refresh_token"].encode() not in bytes(r[0]) for r in stored)


def test_failed_logins_are_alike_and_lock_the_account(
    db_dsn: str, keys: RegistryKeys, root_key: bytes, client: TestClient
) -> None:
    """Unknown user and wrong password give the same 401; 5 failures lock even the right one."""
    new_member(db_dsn, keys, root_key, "lars")
    wrong = client.post("/v1/auth/token", data={"username": "lars", "password": "nope" * 4})
    unknown = client.post("/v1/auth/token", data={"username": "nobody", "password": "x" * 16})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    assert "nope" not in wrong.text
    assert "lars" not in wrong.text
    for _ in range(4):
        client.post("/v1/auth/token", data={"username": "lars", "password": "bad password!"})
    locked = client.post("/v1/auth/token", data={"username": "lars", "password": PASSWORD})
    assert locked.status_code == 401
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT failed_logins, locked_until > now() FROM accounts a "
            "JOIN subjects s USING (subject_id) ORDER BY a.failed_logins DESC LIMIT 1"
        ).fetchone()
    assert row == (5, True)


def test_expired_foreign_and_malformed_tokens_are_401(
    db_dsn: str, keys: RegistryKeys, root_key: bytes, client: TestClient
) -> None:
    """An expired token, one signed by another key, and garbage: 401 problem answers."""
    m = new_member(db_dsn, keys, root_key, "eve")
    principal = Principal(m.account, frozenset({Role.USER}), m.subject)
    ours = AccessTokens(derive_key(root_key, SIGNING_INFO), ttl_s=60)
    expired = ours.issue(principal, now=datetime.now(UTC) - timedelta(minutes=5), token_id="t")
    forged = AccessTokens(os.urandom(32)).issue(principal, now=datetime.now(UTC), token_id="t")
    fresh = ours.issue(principal, now=datetime.now(UTC), token_id="t")
    assert client.get("/v1/me/devices", headers=bearer(fresh)).status_code == 200
    for token in (expired, forged, "not.a.jwt", "x" * 5000):
        answer = client.get("/v1/me/devices", headers=bearer(token))
        assert answer.status_code == 401, token[:20]
        assert answer.headers["content-type"] == "application/problem+json"


def test_oidc_tokens_from_a_jwks(
    db_dsn: str,
    keys: RegistryKeys,
    root_key: bytes,
    client: TestClient,
    issuer_key: rsa.RSAPrivateKey,
) -> None:
    """External tokens verify against the issuer's JWKS; roles come from the claim."""
    m = new_member(db_dsn, keys, root_key, "olga", oidc_subject=f"{ISSUER} ext-olga")
    good = external(issuer_key, "ext-olga", ["user"])
    devices = client.get("/v1/me/devices", headers=bearer(good))
    assert devices.status_code == 200
    assert [d["device_id"] for d in devices.json()] == [m.devices["thermostat"]]
    unlinked = external(issuer_key, "ext-nobody", ["user"])
    assert client.get("/v1/me/devices", headers=bearer(unlinked)).status_code == 403
    support = external(issuer_key, "ext-staff", ["support", "unknown-role"])
    assert client.get("/v1/me/devices", headers=bearer(support)).status_code == 403
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = [
        external(issuer_key, "ext-olga", ["user"], aud="someone-else"),
        external(issuer_key, "ext-olga", ["user"], exp=int(time.time()) - 60),
        external(other_key, "ext-olga", ["user"]),
        jwt.encode({"iss": ISSUER, "sub": "ext-olga", "aud": AUDIENCE}, "k" * 32, "HS256"),
    ]
    for token in bad:
        assert client.get("/v1/me/devices", headers=bearer(token)).status_code == 401


def test_account_cli_reads_the_password_from_stdin(
    db_dsn: str, root_key_file: Path, client: TestClient
) -> None:
    """`qnect account create` for staff: password via stdin, never echoed; the login works."""
    env = dict(os.environ, QNECT_DATABASE_URL=db_dsn, QNECT_ROOT_KEY_FILE=str(root_key_file))
    env.pop("QNECT_ACCOUNT_PASSWORD", None)
    secret = "a staff password that is long"
    cmd = [
        sys.executable,
        "-m",
        "qnect",
        "account",
        "create",
        "--username",
        "dora",
        "--role",
        "dpo",
    ]
    done = subprocess.run(
        cmd, input=secret + "\n", env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["role"] == "dpo"
    assert secret not in done.stdout + done.stderr
    assert login(client, "dora", secret)["roles"] == ["dpo"]
    twice = subprocess.run(
        cmd, input=secret + "\n", env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    assert twice.returncode == 1
    assert secret not in twice.stdout + twice.stderr
    staff(db_dsn, parse_root_key(root_key_file.read_text()), "sam", "support")
    assert login(client, "sam")["roles"] == ["support"]
