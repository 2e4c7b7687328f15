"""Settings from the environment (``QNECT_*``), read once in ``main()``; no secret has a default."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from crypto.keys import KekRing, parse_root_key
from device_registry.model import RegistryKeys


class Settings(BaseSettings):
    """Process settings."""

    model_config = SettingsConfigDict(env_prefix="QNECT_", extra="ignore")

    database_url: SecretStr  # may carry a password: never logged
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    root_key_file: Path
    timescale: Literal["auto", "on", "off"] = "auto"
    epoch_grace_s: float = 300.0

    def root_key(self) -> bytes:
        """Read and check the root key file (refuses placeholders and loose permissions)."""
        mode = self.root_key_file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(f"{self.root_key_file} must be readable by its owner only")
        return parse_root_key(self.root_key_file.read_text())

    def kek_ring(self) -> KekRing:
        """Every KEK version, derived on demand (which one wraps is the database's to say)."""
        return KekRing(self.root_key())

    def registry_keys(self) -> RegistryKeys:
        """The KEK ring and the MAC blind index, for provisioning and device lookups."""
        return RegistryKeys.from_root_key(self.root_key())


def create_root_key_file(path: Path) -> None:
    """Write a new random root key with mode 0600; never overwrite an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
