"""Operator routes (``/v1/ops/…``) and the support read (``/v1/support/…``).

Operators provision devices in batches (credentials are in the response and nowhere else),
stage root-key rotations and follow them, revoke devices, page through the quarantine and
read ingest counts. Support staff read one device or account. Every route that returns data
linkable to a person takes the caller's ``purpose`` and ``reason``: the store reads it through
the privacy gate's rules and audits it with both. The registry and the broker sit behind
``Fleet`` and ``BrokerIdentities`` (implemented in ``device_registry`` and ``qnect``).
"""

# No ``from __future__ import annotations``: FastAPI resolves the routes' local aliases.
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

import structlog
from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.errors import InvalidInput
from api.tokens import Principal
from device_registry.postgres import Credentials
from device_registry.postgres_fleet import QuarantinePage, Revoked
from device_registry.postgres_rekey import RotationProgress, RotationScope
from device_registry.profiles import MODELS
from privacy.postgres_gate import Actor
from privacy.purposes import default_table

log = structlog.get_logger("api.ops")

MAX_BATCH = 500  # devices per provisioning call: one transaction, one answer of ~200 KB
MAX_STAGE = 10_000  # rotations staged per call (the workers offer 500 per pass)
MAX_PAGE = 500
DEVICE_ID = r"^[a-z2-7]{1,64}$"
SUBJECT_ID = r"^u[0-9a-f]{24}$"
PURPOSE = r"^[a-z_]{1,40}$"
REASON = r"^[ -~]{3,200}$"  # printable ASCII: a ticket id or short justification

Model = Literal[MODELS]  # type: ignore[valid-type]  # the shipped device profiles
DeviceId = Annotated[str, Path(pattern=DEVICE_ID)]
# The declared purposes, so the schema lists them; whether the caller's role may invoke one is
# the gate's decision (a refusal is audited and answered 403).
PURPOSES: tuple[str, ...] = tuple(default_table().purposes)
Declared = Literal[PURPOSES]  # type: ignore[valid-type]
Purpose = Annotated[Declared, Query(description="Declared purpose (audited).")]
Reason = Annotated[str, Query(pattern=REASON, description="Ticket or justification (audited).")]


class Fleet(Protocol):
    """What the staff routes need from the registry (``PostgresFleet``)."""

    def provision(self, model: str, count: int) -> list[Credentials]:
        """New devices and their credentials."""
        ...

    def stage_rotation(self, scope: RotationScope, *, limit: int) -> tuple[int, datetime]:
        """Stage rotations: how many, and the run's start."""
        ...

    def rotation_progress(self, scope: RotationScope, *, since: datetime) -> RotationProgress:
        """Totals of a rotation run."""
        ...

    def revoke(self, actor: Actor, device_id: str, reason: str) -> Revoked:
        """Revoke one device (audited)."""
        ...

    def quarantine(
        self,
        actor: Actor,
        purpose: str,
        reason: str,
        *,
        reject_reason: str | None,
        device_id: str | None,
        before: int | None,
        limit: int,
    ) -> QuarantinePage:
        """One page of quarantine rows (audited)."""
        ...

    def stats(self) -> dict[str, object]:
        """Ingest counts."""
        ...

    def support_device(
        self, actor: Actor, purpose: str, reason: str, device_id: str
    ) -> dict[str, object]:
        """A device and its owner's account (gate-read)."""
        ...

    def support_account(
        self, actor: Actor, purpose: str, reason: str, subject_id: str
    ) -> dict[str, object]:
        """An account and its devices (gate-read)."""
        ...


class BrokerIdentities(Protocol):
    """Keeps the broker's device identities in step (dynamic security), or does nothing."""

    def push(self, device_ids: Sequence[str]) -> bool:
        """Create identities for new devices; ``True`` once the broker has them."""
        ...

    def remove(self, device_id: str) -> bool:
        """Delete a revoked device's identity (closing its connection); ``True`` if done."""
        ...


class ProvisionRequest(BaseModel):
    """A batch of devices of one model."""

    model_config = ConfigDict(extra="forbid")

    model: Model
    count: int = Field(ge=1, le=MAX_BATCH)


class DeviceCredentials(BaseModel):
    """What the factory line writes into one device. Shown once; not stored in clear."""

    device_id: str
    model: str
    drk_version: int
    root_key: str = Field(description="64 hex digits")
    mac: str
    mqtt_password: str


class ProvisionAnswer(BaseModel):
    """The new devices; ``broker_synced`` false means run ``qnect broker sync``."""

    devices: list[DeviceCredentials]
    broker_synced: bool


class RotationRequest(BaseModel):
    """Which devices to rotate: ids, models, or ``all``."""

    model_config = ConfigDict(extra="forbid")

    device_ids: list[Annotated[str, Field(pattern=DEVICE_ID)]] = Field(
        default_factory=list, max_length=1000
    )
    models: list[Model] = Field(default_factory=list, max_length=8)
    all: bool = False
    limit: int = Field(default=1000, ge=1, le=MAX_STAGE)


class RotationAnswer(BaseModel):
    """A rotation run: what was staged now, and the totals since ``since``."""

    since: datetime
    staged: int = 0
    total: int
    rotated: int
    pending: int


class RevokeRequest(BaseModel):
    """Why the device is revoked (audited)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(pattern=REASON)


class RevokeAnswer(BaseModel):
    """``revoked`` false: it had been revoked before; ``disconnected``: the broker dropped it."""

    device_id: str
    revoked: bool
    disconnected: bool


class QuarantineAnswer(BaseModel):
    """Quarantine rows (reason codes, sizes, counts; no payloads), newest first."""

    rows: list[dict[str, Any]]
    masked: list[str]
    denied: dict[str, str]
    next_before: int | None = Field(description="Pass as ``before`` for the next page.")


class IngestStats(BaseModel):
    """Counts from the tables."""

    accepted: int
    rejected: dict[str, int]
    rejected_total: int
    devices: dict[str, int]
    online: int


def staff_actor(principal: Principal) -> Actor:
    """The gate's view of a staff caller."""
    return Actor("staff", principal.actor_id, frozenset(str(r) for r in principal.roles))


def _scope(device_ids: Sequence[str], models: Sequence[str], everything: bool) -> RotationScope:
    if not (device_ids or models or everything):
        raise InvalidInput("name device_ids, models or all")
    return RotationScope(tuple(device_ids), tuple(models), everything)


def _progress(since: datetime, staged: int, now: RotationProgress) -> RotationAnswer:
    return RotationAnswer(
        since=since, staged=staged, total=now.total, rotated=now.rotated, pending=now.pending
    )


def ops_router(
    fleet: Fleet, broker: BrokerIdentities, operator: Callable[..., Principal]
) -> APIRouter:
    """``/v1/ops``; *operator* is ``Authenticator.requires(Role.OPERATOR)``."""
    router = APIRouter(prefix="/v1/ops", tags=["operators"])
    Op = Annotated[Principal, Depends(operator)]  # noqa: N806 - a type alias

    @router.post(
        "/devices/batch", status_code=201, summary="Provision devices (credentials shown once)"
    )
    async def provision(op: Op, body: ProvisionRequest, response: Response) -> ProvisionAnswer:
        creds = await run_in_threadpool(fleet.provision, body.model, body.count)
        ids = [c.device_id for c in creds]
        synced = await run_in_threadpool(broker.push, ids)
        log.info("ops.provisioned", actor=op.actor_id, model=body.model, count=len(ids))
        response.headers["Cache-Control"] = "no-store"
        return ProvisionAnswer(
            devices=[DeviceCredentials.model_validate(c.to_json()) for c in creds],
            broker_synced=synced,
        )

    @router.post("/rotations", summary="Stage root-key rotations (connected devices)")
    def rotate(op: Op, body: RotationRequest) -> RotationAnswer:
        scope = _scope(body.device_ids, body.models, body.all)
        staged, since = fleet.stage_rotation(scope, limit=body.limit)
        log.info("ops.rotation_staged", actor=op.actor_id, staged=staged)
        return _progress(since, staged, fleet.rotation_progress(scope, since=since))

    @router.get("/rotations", summary="Progress of a rotation run started at `since`")
    def rotation(
        op: Op,
        since: Annotated[AwareDatetime, Query()],
        device_id: Annotated[list[str], Query(max_length=100)] = [],  # noqa: B006 - FastAPI copies it
        model: Annotated[list[Model], Query(max_length=8)] = [],  # noqa: B006
        all: Annotated[bool, Query()] = False,  # noqa: A002 - the query's name
    ) -> RotationAnswer:
        del op
        if any(not _is_device_id(d) for d in device_id):
            raise InvalidInput("device_id must be a device id")
        scope = _scope(device_id, model, all)
        return _progress(since, 0, fleet.rotation_progress(scope, since=since))

    @router.post(
        "/devices/{device_id}/revoke",
        summary="Revoke a device (registry, then broker)",
        responses={404: {"description": "No such device"}},
    )
    async def revoke(op: Op, device_id: DeviceId, body: RevokeRequest) -> RevokeAnswer:
        done = await run_in_threadpool(fleet.revoke, staff_actor(op), device_id, body.reason)
        gone = await run_in_threadpool(broker.remove, device_id)
        log.info("ops.revoked", actor=op.actor_id, device_id=device_id, was_active=done.revoked)
        return RevokeAnswer(device_id=device_id, revoked=done.revoked, disconnected=gone)

    @router.get("/quarantine", summary="Rejected messages by reason and device (paged)")
    def quarantine(
        op: Op,
        purpose: Purpose,
        reason: Reason,
        reject_reason: Annotated[str | None, Query(pattern=r"^[a-z0-9_]{1,40}$")] = None,
        device_id: Annotated[str | None, Query(pattern=DEVICE_ID)] = None,
        before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> QuarantineAnswer:
        page = fleet.quarantine(
            staff_actor(op),
            purpose,
            reason,
            reject_reason=reject_reason,
            device_id=device_id,
            before=before,
            limit=limit,
        )
        return QuarantineAnswer(
            rows=page.rows,
            masked=list(page.masked),
            denied=page.denied,
            next_before=page.next_before,
        )

    @router.get("/stats", summary="Ingest counts: accepted, rejected per reason, devices")
    def stats(op: Op) -> IngestStats:
        del op
        return IngestStats.model_validate(fleet.stats())

    return router


def _is_device_id(text: str) -> bool:
    return 1 <= len(text) <= 64 and all(c in "abcdefghijklmnopqrstuvwxyz234567" for c in text)


def support_router(fleet: Fleet, support: Callable[..., Principal]) -> APIRouter:
    """``/v1/support``; *support* is ``Authenticator.requires(Role.SUPPORT)``."""
    router = APIRouter(prefix="/v1/support", tags=["support"])
    Staff = Annotated[Principal, Depends(support)]  # noqa: N806 - a type alias
    not_found: dict[int | str, dict[str, Any]] = {404: {"description": "No such device/account"}}

    @router.get("/devices/{device_id}", summary="A device and its owner", responses=not_found)
    def device(
        staff: Staff, device_id: DeviceId, purpose: Purpose, reason: Reason
    ) -> dict[str, Any]:
        return fleet.support_device(staff_actor(staff), purpose, reason, device_id)

    @router.get("/accounts/{subject_id}", summary="An account and its devices", responses=not_found)
    def account(
        staff: Staff,
        subject_id: Annotated[str, Path(pattern=SUBJECT_ID)],
        purpose: Purpose,
        reason: Reason,
    ) -> dict[str, Any]:
        return fleet.support_account(staff_actor(staff), purpose, reason, subject_id)

    return router
