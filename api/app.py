"""The FastAPI application factory and the one table that turns errors into HTTP answers.

Owns: ``create_app`` (routers and a lifespan are handed in by the composition root, so the
mobile, operator and DPO routes of the HTTP API join the same factory later), the error table
(domain exception -> status and RFC 9457 problem+json), and ``/healthz``. Does not own: any
route's logic, settings or the database (``qnect`` wires them).

Error answers never echo request input: FastAPI's default 422 body repeats what was sent,
which for the broker hooks would include a password.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import (
    AuthUnavailable,
    Forbidden,
    InvalidInput,
    MalformedRequest,
    PreconditionRequired,
    ReauthenticationFailed,
    Unauthenticated,
)
from api.metrics import metrics_router
from device_registry.errors import (
    CampaignConflict,
    FirmwareRejected,
    NotVisible,
    PreconditionFailed,
    RegistryUnavailable,
    VersionConflict,
)
from device_registry.pairing import PairingRefused
from privacy.errors import AccessDenied, UnknownSubject

log = structlog.get_logger("api.app")

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = "1"  # brokers retry on the client's next attempt; a hint for other callers


@dataclass(frozen=True, slots=True)
class Problem:
    """How one kind of error is answered."""

    status: int
    slug: str  # stable, documented: urn:qnect:problem:<slug>
    title: str


# The one table of domain errors -> HTTP. Routes raise domain errors; nothing else maps them.
ERRORS: Mapping[type[Exception], Problem] = {
    MalformedRequest: Problem(400, "malformed-request", "The request body is not well-formed"),
    RequestValidationError: Problem(422, "invalid-request", "The request failed validation"),
    RegistryUnavailable: Problem(503, "unavailable", "The device registry is unavailable"),
    PairingRefused: Problem(403, "pairing-refused", "Activation refused"),
    Unauthenticated: Problem(401, "unauthenticated", "Authentication required"),
    AuthUnavailable: Problem(503, "auth-unavailable", "The identity provider is unavailable"),
    Forbidden: Problem(403, "forbidden", "This role may not use this route"),
    AccessDenied: Problem(403, "access-denied", "The purpose does not permit this read"),
    ReauthenticationFailed: Problem(403, "reauthentication-failed", "Password confirmation failed"),
    NotVisible: Problem(404, "not-found", "No such resource"),
    UnknownSubject: Problem(404, "not-found", "No such resource"),
    VersionConflict: Problem(409, "version-conflict", "The version has changed"),
    PreconditionFailed: Problem(412, "precondition-failed", "If-Match does not match"),
    PreconditionRequired: Problem(428, "precondition-required", "Send If-Match or a version"),
    InvalidInput: Problem(422, "invalid-input", "The values were refused"),
    FirmwareRejected: Problem(422, "firmware-rejected", "Firmware or campaign refused"),
    CampaignConflict: Problem(409, "campaign-conflict", "Not allowed in the campaign's status"),
}
_INTERNAL = Problem(500, "internal", "Internal error")


def problem_response(problem: Problem, detail: object = None) -> JSONResponse:
    """A problem+json answer (``detail`` is for safe, structured facts only)."""
    body: dict[str, object] = {
        "type": f"urn:qnect:problem:{problem.slug}",
        "title": problem.title,
        "status": problem.status,
    }
    if detail is not None:
        body["detail"] = detail
    headers = {"Retry-After": RETRY_AFTER_S} if problem.status == 503 else None
    if problem.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}  # RFC 6750 3: no error detail to an attacker
    return JSONResponse(body, problem.status, headers=headers, media_type=PROBLEM_JSON)


def _handler(problem: Problem) -> Callable[[Request, Exception], JSONResponse]:
    def handle(request: Request, exc: Exception) -> JSONResponse:
        log.info(
            "api.problem", path=request.url.path, status=problem.status, error=type(exc).__name__
        )
        detail: object = None
        if isinstance(exc, RequestValidationError):  # where and what, never the input
            detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        elif isinstance(exc, PairingRefused):  # a stable reason code, never the token
            detail = {"reason": exc.reason.value}
        elif isinstance(exc, VersionConflict):
            detail = {"version": exc.current}
        elif isinstance(exc, InvalidInput):  # composed by us from known names only
            detail = exc.detail
        elif isinstance(exc, FirmwareRejected):  # a stable reason and our own wording
            detail = {"reason": exc.reason, "detail": exc.detail}
        elif isinstance(exc, CampaignConflict):
            detail = {"status": exc.status}
        return problem_response(problem, detail)

    return handle


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    del request
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    slug = {404: "not-found", 405: "method-not-allowed"}.get(status, "http-error")
    return problem_response(Problem(status, slug, "HTTP error"))


def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.error("api.internal_error", path=request.url.path, error=type(exc).__name__)
    return problem_response(_INTERNAL)


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {},
    },
}


def _documented_problems(app: FastAPI) -> Callable[[], dict[str, object]]:
    """OpenAPI that says what errors really are: problem+json (FastAPI documents its own 422)."""

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = (
                PROBLEM_SCHEMA
            )
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    for status, answer in operation.get("responses", {}).items():
                        if status[:1] in {"4", "5"}:
                            ref = {"$ref": "#/components/schemas/Problem"}
                            answer["content"] = {PROBLEM_JSON: {"schema": ref}}
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def create_app(
    *,
    routers: Sequence[APIRouter] = (),
    lifespan: Lifespan | None = None,
    title: str = "Qnect",
    version: str = "0.1.0",
) -> FastAPI:
    """Build the HTTP application.

    Args:
        routers: route groups to mount (each carries its own prefix and tags).
        lifespan: owns what lives as long as the app (database connections, caches).
        title: the OpenAPI title.
        version: the OpenAPI version of this API.

    Returns:
        The app, with the error table, ``/healthz``, ``/metrics`` and *routers* installed.
    """
    app = FastAPI(title=title, version=version, lifespan=lifespan)
    for exc_type, problem in ERRORS.items():
        app.add_exception_handler(exc_type, _handler(problem))
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)
    app.include_router(_health)
    app.include_router(metrics_router())  # Prometheus, deploy/metrics.md
    for router in routers:
        app.include_router(router)
    app.openapi = _documented_problems(app)  # type: ignore[method-assign]
    return app


_health = APIRouter(tags=["health"])


@_health.get("/healthz", summary="Liveness: the process answers HTTP")
async def healthz() -> dict[str, str]:
    """Always ``{"status": "ok"}`` while the process serves requests (no dependency checked)."""
    return {"status": "ok"}
