"""Device activation with a pairing token: ``POST /v1/devices/{device_id}/activate``.

The device presents the token the app gave it (during onboarding over BLE or soft-AP), the
household it was told, its clock and a proof of its current root key (``crypto.pairing``).
The route only shapes HTTP: the decision is ``device_registry.postgres_pairing.activate``;
refusals are ``PairingRefused`` and the error table answers them (403 with the reason).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Literal, Protocol

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.errors import MalformedRequest
from crypto.pairing import PROOF_BYTES
from device_registry.postgres_pairing import Activation

DeviceIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z2-7]+$")]


class Activator(Protocol):
    """What the route needs from the registry."""

    def activate(
        self,
        *,
        device_id: str,
        token: str,
        household_id: str,
        ts_ms: int,
        proof: bytes,
        now: datetime,
    ) -> Activation:
        """Redeem the token for the device (raises ``PairingRefused``)."""
        ...


class ActivateRequest(BaseModel):
    """What the device sends."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=64, description="The app's pairing token.")
    household_id: str = Field(min_length=1, max_length=64)
    ts_ms: int = Field(ge=0, le=2**63 - 1, description="The device's clock, Unix ms.")
    proof: str = Field(
        min_length=1, max_length=64, description="base64url HMAC under the device's root key"
    )


class ActivateResponse(BaseModel):
    """What the device learns on success."""

    device_id: str
    household_id: str
    operational_key: Literal["offered_on_connect", "unchanged"] = Field(
        description="A new root key is offered on the device's downlink once it connects."
    )


def _proof_bytes(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedRequest("proof is not base64url") from exc
    if len(raw) != PROOF_BYTES:
        raise MalformedRequest("proof has the wrong length")
    return raw


def pairing_router(activator: Activator) -> APIRouter:
    """The device-facing activation route."""
    router = APIRouter(prefix="/v1", tags=["pairing"])

    @router.post(
        "/devices/{device_id}/activate",
        summary="Activate a device with a pairing token (device-authenticated by its proof)",
        responses={403: {"description": "Refused; `detail.reason` says why"}},
    )
    async def activate(device_id: DeviceIdPath, body: ActivateRequest) -> ActivateResponse:
        proof = _proof_bytes(body.proof)
        done = await run_in_threadpool(
            activator.activate,
            device_id=device_id,
            token=body.token,
            household_id=body.household_id,
            ts_ms=body.ts_ms,
            proof=proof,
            now=datetime.now(UTC),
        )
        return ActivateResponse(
            device_id=done.device_id,
            household_id=done.household_id,
            operational_key="offered_on_connect" if done.operational_key_staged else "unchanged",
        )

    return router
