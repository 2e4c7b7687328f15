"""The mobile app's routes, ``/v1/me/…``: the caller's household, devices, consents and rights.

Every route needs an end user's access token (role ``user``) and works only inside the
caller's household; the scoping, the deny audit of foreign ids and the gate reads are the
store's (``device_registry.postgres_home``). This module shapes HTTP: parameters, units,
the shadow's concurrency headers. A desired-state change is only stored here: the bridge
workers deliver it on the device's downlink, sealed under its session key (the API holds no
session keys), and the device's report confirms it (``broker_bridge.desired``).
"""

# No ``from __future__ import annotations``: the routes' ``Me`` alias is local to the router
# factory, and FastAPI resolves string annotations in module globals only.
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.errors import InvalidInput, PreconditionRequired, ReauthenticationFailed
from api.shadow import from_wire, to_wire
from api.tokens import Principal
from device_registry.postgres_home import HistoryQuery, PostgresHome
from device_registry.profiles import PROFILES, PointType
from privacy.postgres_gate import Actor

DeviceId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z2-7]+$")]
RequestId = Annotated[str, Path(pattern=r"^r[0-9a-f]{24}$")]
ConsentKey = Literal["marketing", "personalisation", "health", "precise_location"]
BUCKETS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "1d": 86400}
MAX_BUCKETS = 1000  # one answer; a year of days or ~6 weeks of hours
ERASE_CONFIRMATION = "erase-my-data"


class DesiredPatch(BaseModel):
    """Settings to change; ``null`` removes one from the desired state."""

    model_config = ConfigDict(extra="forbid")

    desired: dict[str, bool | int | float | str | None] = Field(max_length=16)
    version: int | None = Field(
        default=None, ge=0, description="The version you read (or send If-Match)."
    )


class ShadowAnswer(BaseModel):
    """The desired state after a change (stored; the device confirms it by its report)."""

    device_id: str
    version: int
    desired: dict[str, object]


class ConsentChange(BaseModel):
    """Grant or withdraw."""

    model_config = ConfigDict(extra="forbid")

    granted: bool


class RestrictionChange(BaseModel):
    """Art. 18 restriction on or off."""

    model_config = ConfigDict(extra="forbid")

    restricted: bool


class ErasureRequest(BaseModel):
    """Erasure needs the literal confirmation and the account password."""

    model_config = ConfigDict(extra="forbid")

    confirm: Literal["erase-my-data"]
    password: str = Field(min_length=1, max_length=1024)


class PairingTokenAnswer(BaseModel):
    """A pairing token, shown once; hand it to the device during onboarding."""

    token: str
    household_id: str
    expires_at: datetime


def _actor(principal: Principal) -> Actor:
    return Actor("subject", principal.actor_id, frozenset({"subject"}))


def _subject(principal: Principal) -> str:
    return principal.subject_id or ""  # the role dependency refused users without a subject


def _expected(if_match: str | None, version: int | None) -> tuple[int, bool]:
    if if_match is not None:
        tag = if_match.strip().removeprefix("W/").strip('"')
        if not tag.isdigit() or len(tag) > 18:
            raise PreconditionRequired("If-Match must be a version ETag")
        return int(tag), True
    if version is None:
        raise PreconditionRequired("no version")
    return version, False


def _history_query(
    model: str, device_id: str, point: str, bucket: str, since: datetime, until: datetime
) -> HistoryQuery:
    profile = PROFILES.get(model)
    dp = profile.by_name.get(point) if profile else None
    if dp is None or dp.encrypted or dp.type is PointType.STRING:
        raise InvalidInput("point must be a plain numeric data point of this model")
    if not since < until or (until - since).total_seconds() / BUCKETS[bucket] > MAX_BUCKETS:
        raise InvalidInput(f"since < until and at most {MAX_BUCKETS} buckets")
    return HistoryQuery(device_id, dp.code, f"{BUCKETS[bucket]} seconds", since, until)


def me_router(  # noqa: C901 - one nested function per route, each simple
    home: PostgresHome,
    caller: Callable[..., Principal],
    reauthenticate: Callable[[Principal, str], bool],
) -> APIRouter:
    """The app routes; *caller* is the role dependency (``Authenticator.requires(USER)``)."""
    router = APIRouter(prefix="/v1/me", tags=["mobile app"])
    Me = Annotated[Principal, Depends(caller)]  # noqa: N806 - a type alias
    not_found: dict[int | str, dict[str, Any]] = {
        404: {"description": "Not a device or request of your household"}
    }

    @router.get("/devices", summary="My household's devices (model, presence, firmware)")
    def devices(me: Me) -> list[dict[str, object]]:
        return home.devices(_actor(me), _subject(me))

    @router.get("/devices/{device_id}", summary="Device state and shadow", responses=not_found)
    def state(me: Me, device_id: DeviceId, response: Response) -> dict[str, object]:
        row = home.state(_actor(me), _subject(me), device_id)
        model = str(row["model"])
        for key in ("reported", "desired"):
            value = row.get(key)
            row[key] = from_wire(model, value) if isinstance(value, dict) else value
        response.headers["ETag"] = f'"{row["version"]}"'
        return row

    @router.patch(
        "/devices/{device_id}/desired",
        summary="Change desired settings (optimistic concurrency: If-Match or version)",
        responses={**not_found, 409: {}, 412: {}, 428: {}},
    )
    async def set_desired(
        me: Me,
        device_id: DeviceId,
        body: DesiredPatch,
        response: Response,
        if_match: Annotated[str | None, Header(max_length=40)] = None,
    ) -> ShadowAnswer:
        expected, precondition = _expected(if_match, body.version)
        model = await run_in_threadpool(home.model, _actor(me), _subject(me), device_id)
        patch = to_wire(model, body.desired)
        done = await run_in_threadpool(
            home.set_desired,
            _actor(me),
            _subject(me),
            device_id,
            patch,
            expected=expected,
            precondition=precondition,
        )
        response.headers["ETag"] = f'"{done.version}"'
        return ShadowAnswer(
            device_id=device_id, version=done.version, desired=from_wire(model, done.desired)
        )

    @router.get(
        "/devices/{device_id}/history", summary="A data point in time buckets", responses=not_found
    )
    def history(
        me: Me,
        device_id: DeviceId,
        point: Annotated[str, Query(pattern=r"^[a-z][a-z0-9_]{0,31}$")],
        bucket: Annotated[Literal["1m", "5m", "15m", "1h", "6h", "1d"], Query()] = "1h",
        since: Annotated[AwareDatetime | None, Query()] = None,
        until: Annotated[AwareDatetime | None, Query()] = None,
    ) -> dict[str, object]:
        end = until or datetime.now(UTC)
        start = since or end - timedelta(days=1)
        model = home.model(_actor(me), _subject(me), device_id)
        query = _history_query(model, device_id, point, bucket, start, end)
        rows = home.history(_actor(me), _subject(me), query)
        return {"device_id": device_id, "point": point, "bucket": bucket, "buckets": rows}

    @router.delete("/devices/{device_id}", status_code=204, summary="Unpair", responses=not_found)
    def unpair(me: Me, device_id: DeviceId) -> Response:
        home.unpair(_actor(me), _subject(me), device_id)
        return Response(status_code=204)

    @router.post("/pairing-tokens", status_code=201, summary="A single-use pairing token")
    def pairing_token(me: Me) -> PairingTokenAnswer:
        token = home.pairing_token(_actor(me), _subject(me))
        return PairingTokenAnswer(
            token=token.token, household_id=token.household_id, expires_at=token.expires_at
        )

    @router.get("/consents", summary="My consents in force")
    def consents(me: Me) -> list[dict[str, object]]:
        return home.consents(_actor(me), _subject(me))

    @router.put("/consents/{key}", status_code=204, summary="Grant or withdraw a consent")
    def consent(me: Me, key: Annotated[ConsentKey, Path()], body: ConsentChange) -> Response:
        home.consent(_actor(me), _subject(me), key, "grant" if body.granted else "withdraw")
        return Response(status_code=204)

    @router.post("/export", summary="Art. 15/20: export my data (request id + document)")
    def export(me: Me) -> dict[str, object]:
        request_id, document = home.export(_actor(me), _subject(me))
        return {"request_id": request_id, "export": document}

    @router.put("/restriction", summary="Art. 18: restrict processing of my data (or lift it)")
    def restrict(me: Me, body: RestrictionChange) -> dict[str, str]:
        request_id = home.restrict(_actor(me), _subject(me), restricted=body.restricted)
        return {"request_id": request_id}

    @router.post("/erasure", summary="Art. 17: erase my account and data (password required)")
    def erase(me: Me, body: Annotated[ErasureRequest, Body()]) -> dict[str, object]:
        if not reauthenticate(me, body.password):
            raise ReauthenticationFailed("password")
        report = home.erase(_actor(me), _subject(me))
        return {"request_id": report.request_id, "status": "done"}

    @router.get("/requests/{request_id}", summary="One of my data-subject requests")
    def request(me: Me, request_id: RequestId) -> dict[str, object]:
        return home.request(_actor(me), _subject(me), request_id)

    return router
