"""Settings from the environment (``QNECT_*``), read once in ``main()``; no secret has a default."""

from __future__ import annotations

import os
import socket
import stat
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker_bridge.desired import DesiredConfig
from broker_bridge.dynsec import BRIDGE
from broker_bridge.mqtt import BrokerAddress
from broker_bridge.ota import OtaConfig
from crypto.broker_secrets import service_password
from crypto.firmware import parse_public_key
from crypto.keys import KekRing, parse_root_key
from device_registry.model import RegistryKeys
from telemetry.ratelimit import RateConfig


class Settings(BaseSettings):
    """Process settings."""

    model_config = SettingsConfigDict(env_prefix="QNECT_", extra="ignore")

    database_url: SecretStr  # may carry a password: never logged
    # Where bridge workers and the registry's admin connection reach the broker (an internal
    # listener); devices may use another address (a TLS listener), given to the simulator.
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    device_mqtt_url: str | None = None
    # Keep a Mosquitto dynamic-security broker in step with the registry (provision, revoke,
    # `qnect broker sync`). Off for brokers that authenticate through the HTTP auth hook.
    broker_dynsec: bool = True
    # The root key comes from exactly one provider: a 0600 file, or the environment (for
    # secret managers that inject variables). A KMS provider would be a third branch.
    root_key_file: Path | None = None
    root_key_hex: SecretStr | None = Field(default=None, validation_alias="QNECT_ROOT_KEY")
    timescale: Literal["auto", "on", "off"] = "auto"
    epoch_grace_s: float = 300.0
    # A rotated-away device root key stays decrypt-only this long (sessions under it keep
    # working until the device re-keys), then it is destroyed; longer than epoch_grace_s, so
    # frames resent under an old session are covered too.
    drk_grace_s: float = Field(default=3600.0, gt=0)
    # Per-device limits (telemetry.ratelimit): live frames, and frames stamped before the
    # current connection (a buffer flushed after being offline).
    rate_live_per_s: float = Field(default=50.0, gt=0)
    rate_live_burst: float = Field(default=500.0, ge=1)
    rate_backlog_per_s: float = Field(default=1_000.0, gt=0)
    rate_backlog_burst: float = Field(default=50_000.0, ge=1)
    presence_stale_s: float = Field(default=900.0, gt=0)  # no frame this long: swept offline
    # This deployment member's name in its MQTT session ids (qnect-bridge-<name>-<index>):
    # unique per `qnect bridge` on one broker, and stable across its restarts, since a member
    # resumes (and drains) only the sessions under its own name.
    bridge_name: str = Field(
        default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
    )
    # `qnect bridge` serves /metrics, /readyz and /healthz here when the port is set.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    # `qnect api`: after SIGTERM /readyz answers 503 this long before the server stops
    # accepting, so a load balancer takes it out of rotation first.
    api_drain_s: float = Field(default=2.0, ge=0)

    # OTA: the release public key firmware manifests must verify under (64 hex digits; a
    # public key, so not a secret; unset: uploads are refused), the controller cadence, when a
    # silent device is offered again, when one without progress times out, the chunk size.
    ota_release_pubkey: str | None = None
    ota_tick_s: float = Field(default=1.0, gt=0)
    ota_offer_retry_s: float = Field(default=30.0, gt=0)
    ota_device_timeout_s: float = Field(default=900.0, gt=0)
    ota_chunk_bytes: int = Field(default=16 * 1024, ge=256, le=256 * 1024)
    # Desired state (sent by the bridge workers, sealed): how often workers look for due
    # deliveries, and when an unconfirmed one is sent again.
    desired_tick_s: float = Field(default=1.0, gt=0)
    desired_retry_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_root_key(self) -> Settings:
        if (self.root_key_file is None) == (self.root_key_hex is None):
            raise ValueError("set exactly one of QNECT_ROOT_KEY_FILE and QNECT_ROOT_KEY")
        return self

    def root_key(self) -> bytes:
        """Load and check the root key (refuses placeholders and loose file permissions)."""
        if self.root_key_hex is not None:
            return parse_root_key(self.root_key_hex.get_secret_value())
        path = self.root_key_file
        assert path is not None  # noqa: S101 - the validator guarantees one provider
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(f"{path} must be readable by its owner only")
        return parse_root_key(path.read_text())

    def rate_config(self) -> RateConfig:
        """The per-device rate limits for the whole bridge (workers take a share each)."""
        return RateConfig(
            self.rate_live_per_s,
            self.rate_live_burst,
            self.rate_backlog_per_s,
            self.rate_backlog_burst,
        )

    def kek_ring(self) -> KekRing:
        """Every KEK version, derived on demand (which one wraps is the database's to say)."""
        return KekRing(self.root_key())

    def bridge_address(self) -> BrokerAddress:
        """The broker as the bridge sees it, logged in as ``bridge`` unless the URL has a user."""
        address = BrokerAddress.parse(self.mqtt_url)
        return address.with_login(BRIDGE, service_password(self.root_key(), BRIDGE))

    def ota_release_key(self) -> bytes | None:
        """The release public key (raw 32 bytes), or None when not configured."""
        if self.ota_release_pubkey is None:
            return None
        return parse_public_key(self.ota_release_pubkey)

    def ota_config(self) -> OtaConfig:
        """OTA tunables for the bridge workers."""
        return OtaConfig(
            tick_s=self.ota_tick_s,
            offer_retry=timedelta(seconds=self.ota_offer_retry_s),
            device_timeout=timedelta(seconds=self.ota_device_timeout_s),
            chunk_bytes=self.ota_chunk_bytes,
        )

    def desired_config(self) -> DesiredConfig:
        """Desired-state delivery tunables for the bridge workers."""
        return DesiredConfig(
            tick_s=self.desired_tick_s, retry=timedelta(seconds=self.desired_retry_s)
        )

    def registry_keys(self) -> RegistryKeys:
        """The KEK ring and the MAC blind index, for provisioning and device lookups."""
        return RegistryKeys.from_root_key(self.root_key())


def create_root_key_file(path: Path) -> None:
    """Write a new random root key with mode 0600; never overwrite an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
