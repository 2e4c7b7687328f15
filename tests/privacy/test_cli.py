"""The subject and privacy commands, run as an operator would run them."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from crypto.keys import parse_root_key
from device_registry.model import RegistryKeys
from device_registry.postgres import provision
from tests.fix_bridge import qnect, qnect_json


def _env(db_dsn: str, root_key_file: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(QNECT_DATABASE_URL=db_dsn, QNECT_ROOT_KEY_FILE=str(root_key_file))
    return env


def test_subject_lifecycle_from_the_command_line(db_dsn: str, root_key_file: Path):
    """Create, pair, read masked, export and erase a subject; every step is audited."""
    env = _env(db_dsn, root_key_file)
    keys = RegistryKeys.from_root_key(parse_root_key(root_key_file.read_text()))
    with psycopg.connect(db_dsn) as conn:
        cred = provision(conn, keys, "plug", 1)[0]
    made = qnect_json("subject", "create", "--email", "dora@example.com", "--name", "Dora", env=env)
    sid = made["subject_id"]
    qnect_json("subject", "assign-device", "--device", cred.device_id, "--subject", sid, env=env)
    read = qnect_json(
        "privacy",
        "read",
        "--view",
        "devices",
        "--purpose",
        "customer_support",
        "--subject",
        sid,
        "--actor",
        "support-1",
        "--role",
        "support",
        "--reason",
        "T-9",
        env=env,
    )
    assert read["masked"] == ["mac"]
    assert read["rows"][0]["mac"] == "**:**:**:**:" + cred.mac[-5:]
    denied = qnect(
        "privacy",
        "read",
        "--view",
        "account",
        "--purpose",
        "marketing",
        "--subject",
        sid,
        "--actor",
        "support-1",
        "--role",
        "support",
        "--reason",
        "T-9",
        env=env,
    )
    assert denied.returncode == 1
    assert "role_not_permitted" in denied.stdout
    export = qnect_json("subject", "export", "--subject", sid, "--actor", "dpo-1", env=env)
    assert export["account"][0]["email"] == "dora@example.com"
    assert export["devices"][0]["mac"] == cred.mac
    erased = qnect_json("subject", "erase", "--subject", sid, "--actor", "dpo-1", env=env)
    assert erased["devices_released"] == 1
    again = qnect("subject", "erase", "--subject", sid, "--actor", "dpo-1", env=env)
    assert again.returncode == 1
    assert "UnknownSubject" in again.stderr
    assert "dora@example.com" not in again.stderr
    assert qnect_json("privacy", "check", env=env)["undeclared"] == []
    assert qnect_json("audit", "verify", "--json", env=env)["ok"] is True
    with psycopg.connect(db_dsn) as conn:
        actions = [
            r[0] for r in conn.execute("SELECT action FROM audit_events ORDER BY seq").fetchall()
        ]
    assert actions.count("read") >= 4  # support read, the refusal, the export's reads
    assert "export" in actions
    assert "erase" in actions
