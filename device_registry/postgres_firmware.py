"""PostgreSQL side of firmware artifacts and campaign administration (operators' side).

Owns ``firmware_artifacts`` and the creation and status changes of ``ota_campaigns`` (0010):

* **upload**: the manifest's Ed25519 signature is verified under the configured release
  public key, the artifact's size and SHA-256 must match it, and its anti-rollback sequence
  number must exceed every earlier artifact's for any model it names (under an advisory lock,
  so two uploads cannot both pass). The image is stored in the row (``bytea``, TOASTed);
* **create**: targets the active devices of one model whose reported firmware lies in
  [from_min, from_max], is older than the artifact and not older than its minimum previous
  version, and that are in no other unfinished campaign (optionally only listed devices);
  cuts them into waves (``device_registry.ota.plan_waves``); wave 0 is released at once;
* **pause / resume / abort**, and the views with counts per wave and state.

Does not own: offers, progress and the wave controller (``postgres_ota``, run by workers).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg

from crypto.errors import BadSignature, InvalidKeyMaterial, MalformedManifest
from crypto.firmware import artifact_digest, verify_manifest, version_key
from device_registry.errors import (
    CampaignConflict,
    FirmwareRejected,
    NotVisible,
    RegistryUnavailable,
)
from device_registry.ota import ACTIVE, CampaignStatus, check_waves, plan_waves, targeted
from device_registry.profiles import MODELS

Conn = psycopg.Connection[Any]
_UPLOAD_LOCK = 0x716E6677  # advisory lock: one upload at a time checks and takes a sequence
_ACTIVE = sorted(s.value for s in ACTIVE)
# action -> (statuses it applies to, the status it sets)
_ACTIONS: dict[str, tuple[frozenset[CampaignStatus], CampaignStatus]] = {
    "pause": (frozenset({CampaignStatus.RUNNING}), CampaignStatus.PAUSED),
    "resume": (frozenset({CampaignStatus.PAUSED}), CampaignStatus.RUNNING),
    "abort": (
        frozenset({CampaignStatus.RUNNING, CampaignStatus.PAUSED, CampaignStatus.HALTED}),
        CampaignStatus.ABORTED,
    ),
}


@dataclass(frozen=True, slots=True)
class Artifact:
    """A stored artifact, without its bytes."""

    artifact_id: int
    version: str
    seq: int
    models: list[str]
    min_version: str
    size: int
    sha256: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """What an operator asks for."""

    name: str
    artifact_id: int
    model: str
    from_min: str
    from_max: str
    waves: tuple[int, ...] = (1, 10, 50, 100)
    failure_threshold: float = 0.05
    devices: tuple[str, ...] = ()  # only these devices (still filtered by model and range)


@dataclass(frozen=True, slots=True)
class Campaign:
    """A campaign and where it stands."""

    campaign_id: int
    name: str
    artifact_id: int
    version: str
    model: str
    from_min: str
    from_max: str
    waves: list[int]
    failure_threshold: float
    status: str
    current_wave: int
    halted_wave: int | None
    created_at: datetime
    finished_at: datetime | None
    devices: int = 0
    states: dict[str, int] = field(default_factory=dict)
    by_wave: list[dict[str, int]] = field(default_factory=list)


_ARTIFACTS = """
SELECT artifact_id, version, seq, models, min_version, size, encode(sha256, 'hex'), created_at
FROM firmware_artifacts
"""
_INSERT_ARTIFACT = """
INSERT INTO firmware_artifacts (version, seq, models, min_version, size, sha256, manifest,
                                signature, content, created_by)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
RETURNING artifact_id, version, seq, models, min_version, size, encode(sha256, 'hex'), created_at
"""


def upload(
    conn: Conn,
    blob: bytes,
    signature: bytes,
    content: bytes,
    *,
    release_key: bytes | None,
    actor: str,
) -> Artifact:
    """Verify and store an artifact.

    Raises:
        FirmwareRejected: see the reasons on the class.
    """
    if release_key is None:
        raise FirmwareRejected("no_release_key", "QNECT_OTA_RELEASE_PUBKEY is not set")
    try:
        manifest = verify_manifest(blob, signature, release_key)
    except (BadSignature, InvalidKeyMaterial) as exc:
        raise FirmwareRejected("bad_signature") from exc
    except MalformedManifest as exc:
        raise FirmwareRejected("malformed_manifest", str(exc)) from exc
    if len(content) != manifest.size:
        raise FirmwareRejected("size_mismatch", f"manifest {manifest.size}, got {len(content)}")
    if artifact_digest(content) != manifest.sha256:
        raise FirmwareRejected("digest_mismatch")
    models = sorted(manifest.models)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_UPLOAD_LOCK,))
        row = conn.execute(
            "SELECT max(seq) FROM firmware_artifacts WHERE models && %s::text[]", (models,)
        ).fetchone()
        highest = row[0] if row else None
        if highest is not None and manifest.seq <= highest:
            raise FirmwareRejected("seq_not_increasing", f"highest for these models is {highest}")
        if conn.execute(
            "SELECT 1 FROM firmware_artifacts WHERE version = %s", (manifest.version,)
        ).fetchone():
            raise FirmwareRejected("version_exists", manifest.version)
        stored = conn.execute(
            _INSERT_ARTIFACT,
            (
                manifest.version,
                manifest.seq,
                models,
                manifest.min_version,
                manifest.size,
                manifest.sha256,
                blob,
                signature,
                content,
                actor,
            ),
        ).fetchone()
    assert stored is not None  # noqa: S101 - INSERT … RETURNING returns the row
    return Artifact(*stored)


def artifacts(conn: Conn) -> list[Artifact]:
    """Every artifact, newest first."""
    rows = conn.execute(_ARTIFACTS + "ORDER BY artifact_id DESC")
    return [Artifact(*r) for r in rows.fetchall()]


def artifact(conn: Conn, artifact_id: int) -> Artifact:
    """One artifact.

    Raises:
        NotVisible: no such artifact.
    """
    row = conn.execute(_ARTIFACTS + "WHERE artifact_id = %s", (artifact_id,)).fetchone()
    if row is None:
        raise NotVisible("no such artifact")
    return Artifact(*row)


def _check_spec(spec: CampaignSpec) -> None:
    if spec.model not in MODELS:
        raise FirmwareRejected("unknown_model", spec.model)
    try:
        check_waves(spec.waves)
    except ValueError as exc:
        raise FirmwareRejected("bad_waves", str(exc)) from exc
    try:
        if version_key(spec.from_min) > version_key(spec.from_max):
            raise FirmwareRejected("bad_range", "from_min is newer than from_max")
    except MalformedManifest as exc:
        raise FirmwareRejected("bad_range", "versions are MAJOR.MINOR.PATCH") from exc
    if not 0 <= spec.failure_threshold < 1:
        raise FirmwareRejected("bad_threshold", "0 <= threshold < 1")


_CANDIDATES = """
SELECT d.device_id, st.firmware FROM devices d JOIN device_state st USING (device_id)
WHERE d.model = %(model)s AND d.status = 'active'
  AND (%(all)s OR d.device_id = ANY(%(ids)s))
  AND NOT EXISTS (SELECT 1 FROM ota_devices o
                  WHERE o.device_id = d.device_id AND o.state = ANY(%(active)s))
ORDER BY d.device_id
"""


def create_campaign(conn: Conn, spec: CampaignSpec, *, actor: str, now: datetime) -> int:
    """Create a campaign and its device rows; returns its id.

    Raises:
        FirmwareRejected: a bad spec, or the artifact does not name the model.
        NotVisible: no such artifact.
        CampaignConflict: a targeted device joined another campaign meanwhile.
    """
    _check_spec(spec)
    with conn.transaction():
        art = artifact(conn, spec.artifact_id)
        if spec.model not in art.models:
            raise FirmwareRejected("model_not_in_manifest", spec.model)
        params = {
            "model": spec.model,
            "all": not spec.devices,
            "ids": list(spec.devices),
            "active": _ACTIVE,
        }
        chosen = [
            device_id
            for device_id, firmware in conn.execute(_CANDIDATES, params).fetchall()
            if targeted(
                firmware,
                from_min=spec.from_min,
                from_max=spec.from_max,
                target=art.version,
                min_version=art.min_version,
            )
        ]
        row = conn.execute(
            "INSERT INTO ota_campaigns (name, artifact_id, model, from_min, from_max, waves, "
            "failure_threshold, wave_started_at, created_by, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING campaign_id",
            (
                spec.name,
                spec.artifact_id,
                spec.model,
                spec.from_min,
                spec.from_max,
                list(spec.waves),
                spec.failure_threshold,
                now,
                actor,
                now,
            ),
        ).fetchone()
        assert row is not None  # noqa: S101 - INSERT … RETURNING returns the row
        campaign_id = int(row[0])
        waves = plan_waves(campaign_id, chosen, spec.waves)
        try:
            conn.execute(
                "INSERT INTO ota_devices (campaign_id, device_id, wave, updated_at) "
                "SELECT %s, d, w, %s FROM unnest(%s::text[], %s::smallint[]) AS u(d, w)",
                (campaign_id, now, list(waves), list(waves.values())),
            )
        except psycopg.errors.UniqueViolation as exc:
            raise CampaignConflict("devices_busy") from exc
    return campaign_id


_CAMPAIGN = """
SELECT c.campaign_id, c.name, c.artifact_id, a.version, c.model, c.from_min, c.from_max,
       c.waves::int[], c.failure_threshold, c.status, c.current_wave, c.halted_wave,
       c.created_at, c.finished_at
FROM ota_campaigns c JOIN firmware_artifacts a USING (artifact_id)
"""


def campaign(conn: Conn, campaign_id: int) -> Campaign:
    """A campaign with its counts per state and per wave.

    Raises:
        NotVisible: no such campaign.
    """
    row = conn.execute(_CAMPAIGN + "WHERE c.campaign_id = %s", (campaign_id,)).fetchone()
    if row is None:
        raise NotVisible("no such campaign")
    counts = conn.execute(
        "SELECT wave, state, count(*) FROM ota_devices WHERE campaign_id = %s GROUP BY 1, 2",
        (campaign_id,),
    ).fetchall()
    by_wave: list[dict[str, int]] = [{} for _ in row[7]]
    states: dict[str, int] = {}
    for wave, state, n in counts:
        by_wave[wave][state] = int(n)
        states[state] = states.get(state, 0) + int(n)
    base = Campaign(*row)
    return replace(base, devices=sum(states.values()), states=states, by_wave=by_wave)


def campaigns(conn: Conn) -> list[Campaign]:
    """Every campaign, newest first (without counts)."""
    rows = conn.execute(_CAMPAIGN + "ORDER BY c.campaign_id DESC").fetchall()
    return [Campaign(*r) for r in rows]


def act(conn: Conn, campaign_id: int, action: str, *, now: datetime) -> Campaign:
    """Pause, resume or abort a campaign.

    Raises:
        NotVisible: no such campaign.
        CampaignConflict: the action does not apply to its current status.
    """
    allowed, to = _ACTIONS[action]
    with conn.transaction():
        row = conn.execute(
            "SELECT status FROM ota_campaigns WHERE campaign_id = %s FOR UPDATE", (campaign_id,)
        ).fetchone()
        if row is None:
            raise NotVisible("no such campaign")
        if CampaignStatus(row[0]) not in allowed:
            raise CampaignConflict(row[0])
        finished = now if to is CampaignStatus.ABORTED else None
        # Resuming restarts the wave clock: pending devices were not offered while paused.
        conn.execute(
            "UPDATE ota_campaigns SET status = %s, finished_at = %s, "
            "wave_started_at = CASE WHEN %s THEN %s ELSE wave_started_at END "
            "WHERE campaign_id = %s",
            (to.value, finished, to is CampaignStatus.RUNNING, now, campaign_id),
        )
        if to is CampaignStatus.ABORTED:
            conn.execute(
                "UPDATE ota_devices SET state = 'cancelled', reason = 'aborted', updated_at = %s "
                "WHERE campaign_id = %s AND state = ANY(%s)",
                (now, campaign_id, _ACTIVE),
            )
    return campaign(conn, campaign_id)


class PostgresFirmware:
    """The operator routes' view of firmware and campaigns (one connection per call)."""

    def __init__(self, dsn: str, release_key: bytes | None) -> None:
        self._dsn = dsn
        self._release_key = release_key

    @contextmanager
    def _connect(self) -> Iterator[Conn]:
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise RegistryUnavailable(type(exc).__name__) from exc

    def upload(self, blob: bytes, signature: bytes, content: bytes, *, actor: str) -> Artifact:
        """See :func:`upload`."""
        with self._connect() as conn:
            return upload(
                conn, blob, signature, content, release_key=self._release_key, actor=actor
            )

    def artifacts(self) -> list[Artifact]:
        """See :func:`artifacts`."""
        with self._connect() as conn:
            return artifacts(conn)

    def artifact(self, artifact_id: int) -> Artifact:
        """See :func:`artifact`."""
        with self._connect() as conn:
            return artifact(conn, artifact_id)

    def create_campaign(self, spec: CampaignSpec, *, actor: str, now: datetime) -> Campaign:
        """See :func:`create_campaign`; returns the new campaign."""
        with self._connect() as conn:
            return campaign(conn, create_campaign(conn, spec, actor=actor, now=now))

    def campaigns(self) -> list[Campaign]:
        """See :func:`campaigns`."""
        with self._connect() as conn:
            return campaigns(conn)

    def campaign(self, campaign_id: int) -> Campaign:
        """See :func:`campaign`."""
        with self._connect() as conn:
            return campaign(conn, campaign_id)

    def act(self, campaign_id: int, action: str, *, now: datetime) -> Campaign:
        """See :func:`act`."""
        with self._connect() as conn:
            return act(conn, campaign_id, action, now=now)
