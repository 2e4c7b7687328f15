"""schemathesis against the OpenAPI of the whole ``qnect api`` app, in process (ASGI).

Every operation of the published schema gets generated requests (valid and invalid
parameters, bodies, paths), authenticated with the role its prefix needs: an end user for
``/v1/me``, an operator for ``/v1/ops``, ``/v1/firmware`` and ``/v1/campaigns``, support
staff for ``/v1/support``, the DPO for ``/v1/dpo``. Each answer must not be a 5xx and must
match the documented schema and content type; requests the schema forbids (negative mode)
must be refused without a 5xx. The real database and an open Mosquitto stand behind the
app; the broker's dynamic security is off (provisioning pushes nothing). At least
``MIN_CASES`` requests are made in all.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from crypto.keys import parse_root_key
from device_registry.model import RegistryKeys
from qnect.api_server import build_app
from qnect.settings import Settings
from qnect.settings_api import ApiSettings
from tests.api.home import bearer, login, new_member, staff
from tests.fix_mqtt import Broker

MIN_CASES = 1000
POSITIVE = 45  # cases per operation; small operations exhaust their space sooner
NEGATIVE = 20
STATUSES: Counter[str] = Counter()  # "METHOD path status" -> answers, printed with -s
ROLE_OF_PREFIX = {
    "/v1/me": "user",
    "/v1/ops": "operator",
    "/v1/support": "support",
    "/v1/dpo": "dpo",
    "/v1/firmware": "operator",
    "/v1/campaigns": "operator",
}


@pytest.fixture(scope="module")
def app(db_dsn: str, root_key_file: Path, broker: Broker) -> FastAPI:
    """The `qnect api` app as `build_app` composes it."""
    settings = Settings(
        database_url=SecretStr(db_dsn),
        root_key_file=root_key_file,
        mqtt_url=broker.url,
        broker_dynsec=False,
    )
    return build_app(settings, ApiSettings())


@pytest.fixture(scope="module")
def headers(db_dsn: str, root_key_file: Path, app: FastAPI) -> dict[str, dict[str, str]]:
    """A bearer header per role (a user with a household and devices, and staff)."""
    root = parse_root_key(root_key_file.read_text())
    keys = RegistryKeys.from_root_key(root)
    member = new_member(db_dsn, keys, root, "fuzzy", models=("thermostat", "plug"))
    out: dict[str, dict[str, str]] = {}
    with TestClient(app) as client:
        out["user"] = bearer(login(client, member.username)["access_token"])
        for role in ("operator", "support", "dpo"):
            staff(db_dsn, root, f"fuzz-{role}", role)
            out[role] = bearer(login(client, f"fuzz-{role}")["access_token"])
    return out


def _role(path: str) -> str | None:
    return next((r for p, r in ROLE_OF_PREFIX.items() if path.startswith(p)), None)


def _exercise(operation: Any, mode: GenerationMode, auth: dict[str, str], examples: int) -> int:
    """Run one operation's generated cases; returns how many requests were made."""
    calls = 0
    # Negative cases (values the schema forbids) only have to be refused without a 5xx.
    checks: list[Any] = [not_a_server_error]
    if mode is GenerationMode.POSITIVE:
        checks += [response_schema_conformance, content_type_conformance]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first failure
    )
    def run(case: Any) -> None:
        nonlocal calls
        calls += 1
        answer = case.call_and_validate(headers=dict(auth), checks=checks)  # it adds headers
        STATUSES[f"{operation.method.upper()} {operation.path} {answer.status_code}"] += 1

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
        assert mode is GenerationMode.NEGATIVE
    return calls


def test_api_conforms_to_its_schema(app: FastAPI, headers: dict[str, dict[str, str]]) -> None:
    """Generated requests for every operation: no 5xx, answers match the schema (>= 1,000)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    total, operations = 0, 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the published schema must be valid
        operation = result.ok()
        role = _role(operation.path)
        auth = headers[role] if role else {}
        operations += 1
        total += _exercise(operation, GenerationMode.POSITIVE, auth, POSITIVE)
        total += _exercise(operation, GenerationMode.NEGATIVE, auth, NEGATIVE)
    print(f"schemathesis: {total} requests over {operations} operations")
    for line, count in sorted(STATUSES.items()):
        print(f"  {line}: {count}")
    assert operations >= 25
    assert total >= MIN_CASES
