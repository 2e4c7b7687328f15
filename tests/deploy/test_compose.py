"""deploy/compose.yaml: valid against the Compose Specification, and wired the way Qnect needs.

The schema is the official compose-spec.json that check-jsonschema vendors
(``--builtin-schema vendor.compose-spec``); the rest are structural rules of this project.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any
from urllib.parse import urlparse

from broker_bridge.mqtt import SHARED_FILTER
from tests.deploy.conftest import DEPLOY

CHECK_COMPOSE = (
    sys.executable,
    "-m",
    "check_jsonschema",
    "--builtin-schema",
    "vendor.compose-spec",
)
ONE_SHOT_RESTARTS = ("no", "on-failure")
LONG_RUNNING_RESTARTS = {"always", "unless-stopped"}
# Words that make an environment variable a secret unless it only names a file.
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|ROOT_KEY|PRIVATE|CREDENTIAL", re.IGNORECASE)
# The only variables the file interpolates; none of them is a secret.
ALLOWED_INTERPOLATIONS = {"QNECT_IMAGE", "QNECT_BRIDGE_WORKERS"}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _is_one_shot(name: str, service: dict[str, Any], services: dict[str, Any]) -> bool:
    restart = str(service.get("restart", "no"))
    awaited = any(
        dep.get(name, {}).get("condition") == "service_completed_successfully"
        for dep in (s.get("depends_on", {}) for s in services.values())
        if isinstance(dep, dict)
    )
    return restart.startswith(ONE_SHOT_RESTARTS) and awaited


def test_compose_file_validates_against_the_compose_spec_schema() -> None:
    """Compose file validates against the compose spec schema."""
    result = subprocess.run(
        [*CHECK_COMPOSE, str(DEPLOY / "compose.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_file(tmp_path) -> None:
    """The validator really checks: a misspelt service key fails."""
    broken = tmp_path / "compose.yaml"
    text = (DEPLOY / "compose.yaml").read_text()
    broken.write_text(text.replace("stop_grace_period: 30s", "stop_grace_periods: 30s", 1))
    result = subprocess.run(
        [*CHECK_COMPOSE, str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "stop_grace_periods" in result.stdout


def test_the_stack_has_every_piece(compose) -> None:
    """The stack has every piece."""
    services = compose["services"]
    assert set(services) >= {
        "timescaledb",
        "mosquitto",
        "migrate",
        "bridge",
        "api",
        "prometheus",
        "grafana",
    }
    assert re.fullmatch(
        r"timescale/timescaledb:2\.\d+\.\d+-pg1[56]", services["timescaledb"]["image"]
    )
    assert re.fullmatch(r"eclipse-mosquitto:2(\.\d+)*", services["mosquitto"]["image"])
    assert _command(services["migrate"]) == ["migrate"]
    assert _command(services["api"]) == ["api"]
    assert _env(services["api"])["QNECT_API_PORT"] == "8000"


def test_every_service_has_a_healthcheck_or_is_one_shot(compose) -> None:
    """Every service has a healthcheck or is one shot."""
    services = compose["services"]
    for name, service in services.items():
        if _is_one_shot(name, service, services):
            assert "healthcheck" not in service, name
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no health check"
        assert not check.get("disable"), f"{name} has its health check disabled"
        assert service.get("restart") in LONG_RUNNING_RESTARTS, f"{name}: restart policy"


def test_dependencies_wait_for_health_or_completion(compose) -> None:
    """Dependencies wait for health or completion."""
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for dep, spec in depends.items():
            target = services[dep]
            expected = (
                "service_completed_successfully"
                if _is_one_shot(dep, target, services)
                else "service_healthy"
            )
            assert spec.get("condition") == expected, f"{name} -> {dep}"
    # The bridge starts only on a migrated schema and a broker that knows its identity.
    bridge_deps = services["bridge"]["depends_on"]
    assert {"migrate", "broker-sync", "mosquitto", "timescaledb"} <= set(bridge_deps)


def test_secrets_only_as_files_never_as_values(compose) -> None:
    """Secrets only as files never as values."""
    declared = compose["secrets"]
    for name, secret in declared.items():
        assert set(secret) == {"file"}, f"secret {name} must come from a file"
        path = (DEPLOY / secret["file"]).resolve()
        assert path.is_relative_to(DEPLOY / "secrets"), name
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(DEPLOY / "secrets" / "root.key")],
        cwd=DEPLOY,
        check=False,
    )
    assert ignored.returncode == 0, "deploy/secrets/ must be git-ignored"
    for name, service in compose["services"].items():
        env = _env(service)
        for key, value in env.items():
            if SECRET_WORDS.search(key):
                assert key.endswith("_FILE"), f"{name}: {key} holds a secret value"
                assert value.startswith("/run/secrets/"), f"{name}: {key}={value}"
                assert value.removeprefix("/run/secrets/") in service.get("secrets", []), key
            assert "/run/secrets/" not in value or value.removeprefix("/run/secrets/") in (
                service.get("secrets", [])
            ), f"{name}: {key} names a secret the service does not mount"
        url = env.get("QNECT_DATABASE_URL")
        if url is not None:
            assert urlparse(url).password is None, f"{name}: password in the database URL"
            assert env["PGPASSFILE"] == "/run/secrets/pgpass"


def test_root_key_only_through_the_secret(compose) -> None:
    """Root key only through the secret."""
    text = (DEPLOY / "compose.yaml").read_text()
    assert re.search(r"^\s*QNECT_ROOT_KEY\s*:", text, re.MULTILINE) is None
    for name in re.findall(r"\$\{([A-Z0-9_]+)", text):
        assert name in ALLOWED_INTERPOLATIONS, f"${{{name}}} interpolated"
    qnect_services = {
        name: s for name, s in compose["services"].items() if "QNECT_DATABASE_URL" in _env(s)
    }
    assert {"migrate", "bridge", "api", "broker-init", "broker-sync"} <= set(qnect_services)
    for name, service in qnect_services.items():
        assert _env(service)["QNECT_ROOT_KEY_FILE"] == "/run/secrets/root_key", name
        assert "root_key" in service["secrets"], name
        assert service["user"] == "10001:10001", f"{name} must run as the image's user"
        assert service["read_only"] is True, name
    # Nobody else gets the root key.
    for name, service in compose["services"].items():
        if name not in qnect_services:
            assert "root_key" not in service.get("secrets", []), name


def test_workers_share_one_subscription(compose) -> None:
    """One `qnect bridge` (K workers) on one broker: all on $share/ingest/devices/+/up/#."""
    assert SHARED_FILTER == "$share/ingest/devices/+/up/#"
    bridges = {name: s for name, s in compose["services"].items() if _command(s)[:1] == ["bridge"]}
    assert list(bridges) == ["bridge"], "exactly one bridge service"
    bridge = bridges["bridge"]
    command = _command(bridge)
    assert command[1] == "--workers"
    assert command[2] == "${QNECT_BRIDGE_WORKERS:-2}"
    # Session names are qnect-bridge-<name>-<index>: a fixed name survives re-creation of the
    # container (the default, the host name, would not), and replicas would share it
    # (deploy/scale-out.md).
    assert _env(bridge)["QNECT_BRIDGE_NAME"] == "compose"
    assert bridge["deploy"]["replicas"] == 1
    assert _env(bridge)["QNECT_METRICS_PORT"] == "9210"
    urls = {_env(s).get("QNECT_MQTT_URL") for s in compose["services"].values()} - {None}
    assert urls == {"mqtt://mosquitto:1883"}, "every qnect process on the same broker"


def test_only_devices_api_and_dashboards_are_published(compose) -> None:
    """Only devices api and dashboards are published."""
    published = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published[str(port)] = name
    assert published == {
        "8883:8883": "mosquitto",
        "127.0.0.1:8000:8000": "api",
        "127.0.0.1:9090:9090": "prometheus",
        "127.0.0.1:3000:3000": "grafana",
    }


def test_mosquitto_runs_the_compose_config_with_its_tls_key_as_a_secret(compose) -> None:
    """Mosquitto runs the compose config with its tls key as a secret."""
    mosquitto = compose["services"]["mosquitto"]
    assert "./mosquitto/compose.conf:/mosquitto/config/mosquitto.conf:ro" in mosquitto["volumes"]
    assert mosquitto["secrets"] == ["mqtt_tls_key"]
    assert "mosquitto-data:/mosquitto/data" in mosquitto["volumes"]
    init = compose["services"]["broker-init"]
    assert "mosquitto-data:/var/lib/qnect/mosquitto" in init["volumes"]
    assert (
        "qnect broker init --dynsec-file /var/lib/qnect/mosquitto/dynsec.json"
        in (init["command"][0])
    )
