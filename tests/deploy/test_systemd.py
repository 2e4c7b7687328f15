"""deploy/systemd/: units that systemd accepts, hardened, with the root key as a credential."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY

UNITS = ("qnect-migrate.service", "qnect-bridge.service", "qnect-api.service")
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "DynamicUser": "yes",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
}


def unit(name: str) -> configparser.RawConfigParser:
    """A unit file as sections of keys (repeated keys: see ``multi``)."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def multi(name: str, key: str) -> list[str]:
    """Every value of a key that may repeat (LoadCredential=, Environment=)."""
    return [
        line.split("=", 1)[1]
        for line in (DEPLOY / "systemd" / name).read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


@pytest.mark.parametrize("name", UNITS)
def test_unit_is_hardened_and_gets_the_root_key_as_a_credential(name: str) -> None:
    """Unit is hardened and gets the root key as a credential."""
    service = unit(name)["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, f"{name}: {key}"
    assert "root.key:/etc/qnect/root.key" in multi(name, "LoadCredential")
    assert "pgpass:/etc/qnect/pgpass" in multi(name, "LoadCredential")
    env = multi(name, "Environment")
    assert "QNECT_ROOT_KEY_FILE=%d/root.key" in env
    assert "PGPASSFILE=%d/pgpass" in env
    assert not any(e.startswith("QNECT_ROOT_KEY=") for e in env)
    assert service.get("EnvironmentFile") == "/etc/qnect/qnect.env"


def test_migrate_is_a_oneshot_the_others_require() -> None:
    """Migrate is a oneshot the others require."""
    assert unit("qnect-migrate.service")["Service"]["Type"] == "oneshot"
    for name in ("qnect-bridge.service", "qnect-api.service"):
        u = unit(name)
        assert "qnect-migrate.service" in u["Unit"]["Requires"]
        assert "qnect-migrate.service" in u["Unit"]["After"]
        assert u["Service"]["Restart"] == "always"
    bridge = unit("qnect-bridge.service")["Service"]
    assert bridge["ExecStart"].endswith("bridge --workers ${QNECT_BRIDGE_WORKERS}")
    assert bridge["KillMode"] == "mixed"  # SIGTERM to the supervisor, which drains its workers


def test_environment_example_holds_no_secret() -> None:
    """Environment example holds no secret."""
    text = (DEPLOY / "systemd" / "qnect.env.example").read_text()
    keys = [line.split("=", 1)[0] for line in text.splitlines() if line and line[0] != "#"]
    assert "QNECT_ROOT_KEY" not in keys
    assert "QNECT_ROOT_KEY_FILE" not in keys  # comes from the credential
    assert "QNECT_BRIDGE_WORKERS" in keys
    for line in text.splitlines():
        if line.startswith("QNECT_DATABASE_URL="):
            assert ":" not in line.split("//", 1)[1].split("@", 1)[0], "password in the URL"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """`systemd-analyze verify` (with the binary path pointed at /bin/true) warns about nothing."""
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/qnect/bin/qnect", "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    own = [line for line in result.stderr.splitlines() if str(tmp_path) in line]
    assert not own, "\n".join(own)
