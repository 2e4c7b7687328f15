"""The MQTT auth hook: the decisions, a short device cache, and one router per broker dialect.

Owns: ``AuthHook`` (authenticate a CONNECT, authorise a publish, subscribe or delivery), the
``DeviceCache`` in front of the registry, and the HTTP shapes three brokers speak:

* EMQX 5 HTTP authentication and authorisation: JSON in, ``{"result": "allow"|"deny"}`` out,
  always status 200 (EMQX reads any other status as "ignore");
* mosquitto-go-auth's HTTP backend: JSON or form in, status 200 (allow) or 403 (deny), with
  a ``{"ok": ..., "error": ...}`` body so both its ``status`` and ``json`` response modes work;
* VerneMQ webhooks: JSON in, ``{"result": "ok"}`` or ``{"result": {"error": "not_allowed"}}``.

Does not own: the token format (``crypto.mqtt_tokens``), topic rules (``api.mqtt_access``),
database access (``device_registry.postgres_auth``) or the error table (``api.app``). A
registry outage is raised as ``RegistryUnavailable`` (503), which every broker treats as "not
allowed" (EMQX as "ignore": see deploy/auth-hook.md for the settings that make that a deny).

Revocation takes effect within the cache period (``MAX_CACHE_TTL_S`` at most) plus whatever the
broker caches itself. Passwords and tokens are never logged; usernames are logged only when
they name one of our identities.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Protocol, TypeVar
from urllib.parse import parse_qs

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from api.errors import MalformedRequest
from api.mqtt_access import (
    Action,
    Verdict,
    client_id_fits,
    device_may,
    identity_kind,
    service_may,
)
from crypto.errors import CryptoError, TokenError
from crypto.mqtt_tokens import CLOCK_SKEW_S, MAX_LIFETIME_S, parse, verify
from device_registry.postgres_auth import DeviceAuth

log = structlog.get_logger("api.auth_hook")

MAX_CACHE_TTL_S = 30.0  # the promise: a revocation reaches the hook within 30 s
DEFAULT_CACHE_TTL_S = 5.0  # a reconnect storm hits the database once per device, not per retry
MAX_CACHE_ENTRIES = 100_000  # about 50 MB at most; beyond it the cache starts over
MAX_FIELD_CHARS = 1024  # usernames, passwords and client ids are far shorter
MAX_TOPIC_CHARS = 65_535  # the MQTT limit; api.mqtt_access refuses long topics itself


class DeviceLookup(Protocol):
    """Where the hook learns a device's status and root keys."""

    def lookup(self, device_id: str) -> DeviceAuth | None:
        """The device, or ``None`` if there is no such device."""
        ...


class DeviceCache:
    """Remembers lookups (found or not) for ``ttl_s``; failures are never remembered."""

    def __init__(
        self,
        source: DeviceLookup,
        *,
        ttl_s: float = DEFAULT_CACHE_TTL_S,
        max_entries: int = MAX_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Wrap *source*.

        Raises:
            ValueError: *ttl_s* is negative or above ``MAX_CACHE_TTL_S``.
        """
        if not 0 <= ttl_s <= MAX_CACHE_TTL_S:
            raise ValueError(f"cache TTL must be within 0..{MAX_CACHE_TTL_S} s")
        self._source, self._ttl, self._max, self._clock = source, ttl_s, max_entries, clock
        self._entries: dict[str, tuple[float, DeviceAuth | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, device_id: str) -> DeviceAuth | None:
        """The device as the source saw it at most ``ttl_s`` ago.

        Raises:
            RegistryUnavailable: the source could not be asked.
        """
        now = self._clock()
        with self._lock:
            hit = self._entries.get(device_id)
        if hit is not None and now < hit[0]:
            return hit[1]
        found = self._source.lookup(device_id)
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[device_id] = (now + self._ttl, found)
        return found


class AuthHook:
    """Answers brokers: may this client connect, and may it use this topic."""

    def __init__(
        self,
        devices: DeviceLookup,
        service_passwords: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
        skew_s: int = CLOCK_SKEW_S,
        max_lifetime_s: int = MAX_LIFETIME_S,
    ) -> None:
        """Check devices against *devices* and services against *service_passwords*."""
        self._devices = devices
        self._services = {name: pw.encode() for name, pw in service_passwords.items()}
        self._clock, self._skew, self._lifetime = clock, skew_s, max_lifetime_s

    def __repr__(self) -> str:
        """Name the services, never their passwords."""
        return f"AuthHook(services={sorted(self._services)})"

    def authenticate(
        self, username: str | None, password: str | None, client_id: str | None
    ) -> Verdict:
        """May a client with these credentials connect?

        Raises:
            RegistryUnavailable: the device could not be looked up.
        """
        if not username or password is None:
            return Verdict.deny("no_credentials")
        kind = identity_kind(username)
        if kind is None:
            return Verdict.deny("unknown_identity")
        if not client_id_fits(username, client_id):
            return Verdict.deny("client_id_mismatch")
        if kind == "service":
            return self._service(username, password)
        return self._token(username, password)

    def _service(self, name: str, password: str) -> Verdict:
        expected = self._services.get(name)
        if expected is None or not hmac.compare_digest(password.encode(), expected):
            return Verdict.deny("bad_service_password")
        return Verdict.allow()

    def _token(self, device_id: str, password: str) -> Verdict:
        try:
            parse(password)  # junk never costs a database round trip
            device = self._device(device_id)
            if isinstance(device, Verdict):
                return device
            now = self._clock()
            token = verify(
                password,
                device_id,
                root_keys=device.root_keys(now),
                now=now,
                skew_s=self._skew,
                max_lifetime_s=self._lifetime,
            )
        except TokenError as exc:
            return Verdict.deny(exc.reason)
        return Verdict.allow(expires_at=token.expires_at)

    def authorize(
        self, username: str | None, client_id: str | None, action: Action | None, topic: str
    ) -> Verdict:
        """May an authenticated client *action* on *topic*?

        Raises:
            RegistryUnavailable: the device could not be looked up.
        """
        if not username or action is None:
            return Verdict.deny("unknown_action" if username else "no_credentials")
        kind = identity_kind(username)
        if kind is None:
            return Verdict.deny("unknown_identity")
        if not client_id_fits(username, client_id):
            return Verdict.deny("client_id_mismatch")
        if kind == "service":
            allowed = service_may(username, action, topic)
            return Verdict.allow() if allowed else Verdict.deny("topic_not_allowed")
        if not device_may(username, action, topic):
            return Verdict.deny("topic_not_allowed")
        device = self._device(username)
        return device if isinstance(device, Verdict) else Verdict.allow()

    def _device(self, device_id: str) -> DeviceAuth | Verdict:
        try:
            device = self._devices.lookup(device_id)
        except CryptoError as exc:  # a root key that does not open: refuse, and tell operators
            # Not log.exception: a rendered traceback may show locals, and those hold keys.
            log.error(  # noqa: TRY400
                "auth_hook.root_key_unreadable", device_id=device_id, error=type(exc).__name__
            )
            return Verdict.deny("root_key_unreadable")
        if device is None:
            return Verdict.deny("unknown_device")
        if not device.active:
            return Verdict.deny("device_revoked")
        return device


def _log(broker: str, check: str, username: str | None, verdict: Verdict) -> None:
    who = username if username and identity_kind(username) else None
    fields: dict[str, Any] = {"broker": broker, "check": check, "reason": verdict.reason}
    if who is None:
        fields["username_len"] = len(username or "")
    else:
        fields["identity"] = who
    if check == "authn" or not verdict.allowed:  # allowed topic checks are too many to log
        log.info("auth_hook.allowed" if verdict.allowed else "auth_hook.denied", **fields)


# -- request and response shapes ----------------------------------------------------------------
Short = Annotated[str, Field(max_length=MAX_FIELD_CHARS)]
Topic = Annotated[str, Field(max_length=MAX_TOPIC_CHARS)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class EmqxAuthnRequest(_Body):
    """EMQX HTTP authentication body (configured as in deploy/auth-hook.md)."""

    username: Short | None = None
    password: Short | None = None
    clientid: Short | None = None


class EmqxAuthzRequest(_Body):
    """EMQX HTTP authorisation body."""

    username: Short | None = None
    clientid: Short | None = None
    topic: Topic
    action: Short = Field(description="`publish` or `subscribe` (`all` is refused)")


class EmqxAnswer(BaseModel):
    """EMQX reads ``result``; ``expire_at`` (5.8+) disconnects a device when its token ends."""

    result: Literal["allow", "deny"]
    is_superuser: bool = False
    expire_at: int | None = None


class GoAuthUser(_Body):
    """mosquitto-go-auth ``getuser`` body (JSON or form)."""

    username: Short | None = None
    password: Short | None = None
    clientid: Short | None = None


class GoAuthSuperuser(_Body):
    """mosquitto-go-auth ``superuser`` body."""

    username: Short | None = None


class GoAuthAcl(_Body):
    """mosquitto-go-auth ``aclcheck`` body; ``acc``: 1 read, 2 write, 4 subscribe."""

    username: Short | None = None
    clientid: Short | None = None
    topic: Topic
    acc: int


class GoAuthAnswer(BaseModel):
    """Status 200 allows and 403 refuses; the body serves go-auth's ``json`` response mode."""

    ok: bool
    error: str = ""


class VerneRegister(_Body):
    """VerneMQ ``auth_on_register`` / ``auth_on_register_m5`` body."""

    username: Short | None = None
    password: Short | None = None
    client_id: Short | None = None
    mountpoint: Short = ""


class VernePublish(_Body):
    """VerneMQ ``auth_on_publish`` / ``auth_on_publish_m5`` body (payload ignored)."""

    username: Short | None = None
    client_id: Short | None = None
    mountpoint: Short = ""
    topic: Topic


class VerneTopic(_Body):
    """One topic filter of a subscribe."""

    topic: Topic
    qos: int = 0


class VerneSubscribe(_Body):
    """VerneMQ ``auth_on_subscribe`` / ``auth_on_subscribe_m5`` body."""

    username: Short | None = None
    client_id: Short | None = None
    mountpoint: Short = ""
    topics: list[VerneTopic] = Field(max_length=256)


class VerneError(BaseModel):
    """The refusal VerneMQ understands."""

    error: Literal["not_allowed"] = "not_allowed"


class VerneAnswer(BaseModel):
    """``{"result": "ok"}`` or ``{"result": {"error": "not_allowed"}}``."""

    result: Literal["ok"] | VerneError


_EMQX_ACTIONS = {"publish": Action.PUBLISH, "subscribe": Action.SUBSCRIBE}
_GO_AUTH_ACC = {1: Action.READ, 2: Action.PUBLISH, 4: Action.SUBSCRIBE}
_FORM = "application/x-www-form-urlencoded"
M = TypeVar("M", bound=BaseModel)


async def _json_or_form(request: Request, model: type[M]) -> M:
    """Read *model* from a JSON or urlencoded-form body (go-auth's two ``params_mode``s).

    Raises:
        MalformedRequest: neither, a repeated form field, or fields that do not validate.
    """
    raw = await request.body()
    try:
        if request.headers.get("content-type", "").split(";")[0].strip() == _FORM:
            fields = parse_qs(raw.decode(), keep_blank_values=True, strict_parsing=bool(raw))
            if any(len(v) != 1 for v in fields.values()):
                raise MalformedRequest("repeated form field")
            return model.model_validate({k: v[0] for k, v in fields.items()})
        return model.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:  # JSONDecodeError, UnicodeDecodeError too
        raise MalformedRequest(type(exc).__name__) from None


def _go_auth_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    content = {"application/json": {"schema": schema}, _FORM: {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


def _go_auth_answer(verdict: Verdict) -> JSONResponse:
    body = GoAuthAnswer(ok=verdict.allowed, error="" if verdict.allowed else "denied")
    return JSONResponse(body.model_dump(), 200 if verdict.allowed else 403)


def _verne(verdict: Verdict) -> VerneAnswer:
    return VerneAnswer(result="ok" if verdict.allowed else VerneError())


_GO_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": GoAuthAnswer, "description": "Allowed"},
    403: {"model": GoAuthAnswer, "description": "Refused"},
}


def broker_router(hook: AuthHook) -> APIRouter:  # noqa: C901 - one small route per hook
    """The auth hook's routes for EMQX, mosquitto-go-auth and VerneMQ, under ``/mqtt``."""
    router = APIRouter(prefix="/mqtt", tags=["mqtt auth hook"])

    async def authn(
        broker: str, username: str | None, password: str | None, cid: str | None
    ) -> Verdict:
        verdict = await run_in_threadpool(hook.authenticate, username, password, cid)
        _log(broker, "authn", username, verdict)
        return verdict

    async def authz(
        broker: str, username: str | None, cid: str | None, action: Action | None, topic: str
    ) -> Verdict:
        verdict = await run_in_threadpool(hook.authorize, username, cid, action, topic)
        _log(broker, "authz", username, verdict)
        return verdict

    @router.post(
        "/emqx/authn", summary="EMQX 5 HTTP authentication", response_model_exclude_none=True
    )
    async def emqx_authn(body: EmqxAuthnRequest) -> EmqxAnswer:
        """Allow a device with a valid token (``expire_at`` = its expiry) or a service."""
        verdict = await authn("emqx", body.username, body.password, body.clientid)
        return EmqxAnswer(
            result="allow" if verdict.allowed else "deny", expire_at=verdict.expires_at
        )

    @router.post(
        "/emqx/authz", summary="EMQX 5 HTTP authorisation", response_model_exclude_none=True
    )
    async def emqx_authz(body: EmqxAuthzRequest) -> EmqxAnswer:
        """Allow a publish or subscribe the topic rules permit; anything else is denied."""
        action = _EMQX_ACTIONS.get(body.action)
        verdict = await authz("emqx", body.username, body.clientid, action, body.topic)
        return EmqxAnswer(result="allow" if verdict.allowed else "deny")

    @router.post(
        "/go-auth/user",
        summary="mosquitto-go-auth: check a user",
        openapi_extra=_go_auth_body(GoAuthUser),
        responses=_GO_AUTH_RESPONSES,
    )
    async def go_auth_user(request: Request) -> JSONResponse:
        """200 for a device with a valid token or a service; 403 otherwise."""
        body = await _json_or_form(request, GoAuthUser)
        return _go_auth_answer(await authn("go-auth", body.username, body.password, body.clientid))

    @router.post(
        "/go-auth/superuser",
        summary="mosquitto-go-auth: superuser check (nobody is)",
        openapi_extra=_go_auth_body(GoAuthSuperuser),
        responses=_GO_AUTH_RESPONSES,
    )
    async def go_auth_superuser(request: Request) -> JSONResponse:
        """Always 403: no identity bypasses the topic rules."""
        await _json_or_form(request, GoAuthSuperuser)
        return _go_auth_answer(Verdict.deny("no_superusers"))

    @router.post(
        "/go-auth/acl",
        summary="mosquitto-go-auth: check a topic",
        openapi_extra=_go_auth_body(GoAuthAcl),
        responses=_GO_AUTH_RESPONSES,
    )
    async def go_auth_acl(request: Request) -> JSONResponse:
        """200 if the topic rules permit ``acc`` (1 read, 2 write, 4 subscribe); 403 otherwise."""
        body = await _json_or_form(request, GoAuthAcl)
        action = _GO_AUTH_ACC.get(body.acc)
        return _go_auth_answer(
            await authz("go-auth", body.username, body.clientid, action, body.topic)
        )

    @router.post("/vernemq/auth_on_register", summary="VerneMQ webhook: auth_on_register")
    @router.post("/vernemq/auth_on_register_m5", summary="VerneMQ webhook: auth_on_register_m5")
    async def verne_register(body: VerneRegister) -> VerneAnswer:
        """``ok`` for a device with a valid token or a service; ``not_allowed`` otherwise."""
        return _verne(await authn("vernemq", body.username, body.password, body.client_id))

    @router.post("/vernemq/auth_on_publish", summary="VerneMQ webhook: auth_on_publish")
    @router.post("/vernemq/auth_on_publish_m5", summary="VerneMQ webhook: auth_on_publish_m5")
    async def verne_publish(body: VernePublish) -> VerneAnswer:
        """``ok`` if the topic rules permit the publish; ``not_allowed`` otherwise."""
        return _verne(
            await authz("vernemq", body.username, body.client_id, Action.PUBLISH, body.topic)
        )

    @router.post("/vernemq/auth_on_subscribe", summary="VerneMQ webhook: auth_on_subscribe")
    @router.post("/vernemq/auth_on_subscribe_m5", summary="VerneMQ webhook: auth_on_subscribe_m5")
    async def verne_subscribe(body: VerneSubscribe) -> VerneAnswer:
        """``ok`` only if every filter is permitted (one refused filter refuses the packet)."""
        if not body.topics:
            return _verne(Verdict.deny("no_topics"))
        for item in body.topics:
            verdict = await authz(
                "vernemq", body.username, body.client_id, Action.SUBSCRIBE, item.topic
            )
            if not verdict.allowed:
                return _verne(verdict)
        return _verne(Verdict.allow())

    return router
