"""Operator routes for signed firmware and staged OTA campaigns (`/v1/firmware`, `/v1/campaigns`).

Only shapes HTTP: the registry verifies manifests and runs campaigns
(``device_registry.postgres_firmware``); refusals are ``FirmwareRejected`` (422 with a reason)
and ``CampaignConflict`` (409), answered by the error table. No route returns personal data:
artifacts and campaign counts are fleet operations.
"""

# No ``from __future__ import annotations``: the routes' ``Operator`` alias is local to the
# router factory, and FastAPI resolves string annotations in module globals only.

import base64
import binascii
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal, Protocol

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.errors import MalformedRequest
from api.tokens import Principal
from crypto.firmware import MAX_MANIFEST_BYTES, SIGNATURE_BYTES
from device_registry.postgres_firmware import Artifact, Campaign, CampaignSpec

MAX_UPLOAD_BYTES = 16 * 1024 * 1024  # JSON + base64 in one request; larger images: the CLI
_VERSION = r"^\d{1,4}\.\d{1,4}\.\d{1,6}(?:[-+][0-9A-Za-z.]{1,16})?$"
IdPath = Annotated[int, Path(ge=1, le=2**63 - 1)]


class FirmwareAdmin(Protocol):
    """What the routes need from the registry."""

    def upload(self, blob: bytes, signature: bytes, content: bytes, *, actor: str) -> Artifact:
        """Verify and store an artifact."""
        ...

    def artifacts(self) -> list[Artifact]:
        """Every artifact."""
        ...

    def artifact(self, artifact_id: int) -> Artifact:
        """One artifact (``NotVisible`` if unknown)."""
        ...

    def create_campaign(self, spec: CampaignSpec, *, actor: str, now: datetime) -> Campaign:
        """Create and start a campaign."""
        ...

    def campaigns(self) -> list[Campaign]:
        """Every campaign."""
        ...

    def campaign(self, campaign_id: int) -> Campaign:
        """One campaign with counts (``NotVisible`` if unknown)."""
        ...

    def act(self, campaign_id: int, action: str, *, now: datetime) -> Campaign:
        """Pause, resume or abort."""
        ...


class UploadRequest(BaseModel):
    """A signed manifest (as ``qnect ota sign-manifest`` writes it) and the image."""

    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(
        min_length=1, max_length=2 * MAX_MANIFEST_BYTES, description="base64 canonical manifest"
    )
    signature: str = Field(min_length=1, max_length=128, description="base64 Ed25519 signature")
    content: str = Field(
        min_length=1, max_length=MAX_UPLOAD_BYTES * 4 // 3 + 4, description="base64 image"
    )


class ArtifactOut(BaseModel):
    """A stored artifact (its manifest fields)."""

    artifact_id: int
    version: str
    seq: int = Field(description="Anti-rollback sequence number")
    models: list[str]
    min_version: str
    size: int
    sha256: str
    created_at: datetime


class CampaignRequest(BaseModel):
    """A staged rollout of one artifact to one model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    artifact_id: int = Field(ge=1, le=2**63 - 1)
    model: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]{0,31}$")
    from_min: str = Field(pattern=_VERSION, description="Lowest firmware targeted")
    from_max: str = Field(pattern=_VERSION, description="Highest firmware targeted")
    waves: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default=[1, 10, 50, 100], min_length=1, max_length=10, description="Cumulative %"
    )
    failure_threshold: float = Field(
        default=0.05, ge=0, lt=1, description="Halt when a wave's failed share passes this"
    )
    devices: list[Annotated[str, Field(pattern=r"^[a-z2-7]{1,64}$")]] = Field(
        default=[], max_length=10_000, description="Only these devices (canaries); empty: all"
    )


class CampaignOut(BaseModel):
    """A campaign and its counts (per state, and per wave)."""

    campaign_id: int
    name: str
    artifact_id: int
    version: str
    model: str
    from_min: str
    from_max: str
    waves: list[int]
    failure_threshold: float
    status: Literal["running", "paused", "halted", "completed", "aborted"]
    current_wave: int
    halted_wave: int | None
    created_at: datetime
    finished_at: datetime | None
    devices: int
    states: dict[str, int]
    by_wave: list[dict[str, int]]


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedRequest(f"{what} is not base64") from exc


def _campaign_out(c: Campaign) -> CampaignOut:
    return CampaignOut.model_validate(c, from_attributes=True)


def firmware_router(admin: FirmwareAdmin, operator: Callable[..., Principal]) -> APIRouter:
    """``/v1/firmware`` and ``/v1/campaigns`` for the operator role."""
    router = APIRouter(prefix="/v1", tags=["firmware"])
    Operator = Annotated[Principal, Depends(operator)]  # noqa: N806 - a type alias

    @router.post("/firmware", status_code=201, summary="Upload a signed firmware artifact")
    async def upload(body: UploadRequest, who: Operator) -> ArtifactOut:
        blob, signature = _b64(body.manifest, "manifest"), _b64(body.signature, "signature")
        if len(signature) != SIGNATURE_BYTES or len(blob) > MAX_MANIFEST_BYTES:
            raise MalformedRequest("manifest or signature has the wrong length")
        content = _b64(body.content, "content")
        stored = await run_in_threadpool(admin.upload, blob, signature, content, actor=who.actor_id)
        return ArtifactOut.model_validate(stored, from_attributes=True)

    @router.get("/firmware", summary="Firmware artifacts, newest first")
    async def list_firmware(who: Operator) -> list[ArtifactOut]:
        del who
        rows = await run_in_threadpool(admin.artifacts)
        return [ArtifactOut.model_validate(a, from_attributes=True) for a in rows]

    @router.get("/firmware/{artifact_id}", summary="One firmware artifact")
    async def get_firmware(artifact_id: IdPath, who: Operator) -> ArtifactOut:
        del who
        found = await run_in_threadpool(admin.artifact, artifact_id)
        return ArtifactOut.model_validate(found, from_attributes=True)

    @router.post("/campaigns", status_code=201, summary="Start a staged OTA campaign")
    async def create(body: CampaignRequest, who: Operator) -> CampaignOut:
        spec = CampaignSpec(
            body.name,
            body.artifact_id,
            body.model,
            body.from_min,
            body.from_max,
            tuple(body.waves),
            body.failure_threshold,
            tuple(body.devices),
        )
        made = await run_in_threadpool(
            admin.create_campaign, spec, actor=who.actor_id, now=datetime.now(UTC)
        )
        return _campaign_out(made)

    @router.get("/campaigns", summary="Campaigns, newest first (without counts)")
    async def list_campaigns(who: Operator) -> list[CampaignOut]:
        del who
        return [_campaign_out(c) for c in await run_in_threadpool(admin.campaigns)]

    @router.get("/campaigns/{campaign_id}", summary="A campaign with counts per state and wave")
    async def get_campaign(campaign_id: IdPath, who: Operator) -> CampaignOut:
        del who
        return _campaign_out(await run_in_threadpool(admin.campaign, campaign_id))

    @router.post(
        "/campaigns/{campaign_id}/{action}",
        summary="Pause (no new offers), resume, or abort (unfinished devices cancelled)",
        responses={409: {"description": "Not allowed in the campaign's current status"}},
    )
    async def change(
        campaign_id: IdPath, action: Literal["pause", "resume", "abort"], who: Operator
    ) -> CampaignOut:
        del who
        done = await run_in_threadpool(admin.act, campaign_id, action, now=datetime.now(UTC))
        return _campaign_out(done)

    return router
