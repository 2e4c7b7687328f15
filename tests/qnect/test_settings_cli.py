"""Settings and CLI contract: keys are never defaulted, overwritten or world-readable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pydantic
import pytest

from crypto.errors import InvalidKeyMaterial
from qnect.settings import Settings, create_root_key_file
from tests.fix_bridge import qnect


def test_keys_init_writes_0600_and_never_overwrites(tmp_path: Path) -> None:
    """`qnect keys init` creates a private 32-byte key and refuses to overwrite it."""
    key = tmp_path / "root.key"
    assert qnect("keys", "init", "--out", str(key)).returncode == 0
    assert key.stat().st_mode & 0o777 == 0o600
    assert len(bytes.fromhex(key.read_text().strip())) == 32
    before = key.read_text()
    again = qnect("keys", "init", "--out", str(key))
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    assert key.read_text() == before


def test_settings_require_database_and_root_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No secret has a default: missing QNECT_DATABASE_URL or root key file is an error."""
    monkeypatch.delenv("QNECT_DATABASE_URL", raising=False)
    monkeypatch.delenv("QNECT_ROOT_KEY_FILE", raising=False)
    monkeypatch.delenv("QNECT_ROOT_KEY", raising=False)
    with pytest.raises(pydantic.ValidationError):
        Settings()  # type: ignore[call-arg]


def test_root_key_from_exactly_one_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The root key comes from the file or QNECT_ROOT_KEY, never both, never neither."""
    monkeypatch.setenv("QNECT_DATABASE_URL", "postgresql://x@127.0.0.1/none")
    monkeypatch.delenv("QNECT_ROOT_KEY_FILE", raising=False)
    key = tmp_path / "root.key"
    create_root_key_file(key)
    monkeypatch.setenv("QNECT_ROOT_KEY", key.read_text().strip())
    assert Settings().root_key() == bytes.fromhex(key.read_text())  # type: ignore[call-arg]
    monkeypatch.setenv("QNECT_ROOT_KEY_FILE", str(key))
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        Settings()  # type: ignore[call-arg]
    monkeypatch.delenv("QNECT_ROOT_KEY_FILE")
    monkeypatch.setenv("QNECT_ROOT_KEY", "ab" * 32)
    with pytest.raises(InvalidKeyMaterial):
        Settings().root_key()  # type: ignore[call-arg]
    assert "ab" * 32 not in repr(Settings())  # type: ignore[call-arg]


def test_root_key_placeholder_and_loose_permissions_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A placeholder key or a group-readable key file stops the process."""
    monkeypatch.setenv("QNECT_DATABASE_URL", "postgresql://x@127.0.0.1/none")
    placeholder = tmp_path / "zero.key"
    placeholder.write_text("00" * 32)
    placeholder.chmod(0o600)
    monkeypatch.setenv("QNECT_ROOT_KEY_FILE", str(placeholder))
    with pytest.raises(InvalidKeyMaterial):
        Settings().kek_ring()  # type: ignore[call-arg]
    loose = tmp_path / "loose.key"
    create_root_key_file(loose)
    loose.chmod(0o640)
    monkeypatch.setenv("QNECT_ROOT_KEY_FILE", str(loose))
    with pytest.raises(PermissionError):
        Settings().kek_ring()  # type: ignore[call-arg]


def test_provision_refuses_unknown_model_and_migrate_is_idempotent(
    db_dsn: str, root_key_file: Path
) -> None:
    """Unknown models get a clear error; `qnect migrate` on a current schema applies nothing."""
    env = dict(os.environ, QNECT_DATABASE_URL=db_dsn, QNECT_ROOT_KEY_FILE=str(root_key_file))
    bad = qnect(
        "device", "provision", "--model", "toaster", "--count", "1", "--out", "/dev/null", env=env
    )
    assert bad.returncode == 2
    assert "unknown model 'toaster'" in bad.stderr
    out = qnect("migrate", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"applied": [], "layout": "native"}
