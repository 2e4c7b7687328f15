"""The data-protection officer's routes, ``/v1/dpo/…`` (role ``dpo``).

Audit search (by subject, actor, purpose, decision and time; paged newest first), audit
verification (seals, chain, MACs), the Art. 30 record of processing generated from the purpose
table, and the queue of data-subject requests by due date. The audit log and the queue name
people, so those two routes take the caller's ``purpose`` and ``reason`` and their reads are
audited like any other (``privacy.postgres_oversight``, behind ``Oversight``).
"""

# No ``from __future__ import annotations``: FastAPI resolves the routes' local aliases.
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Depends, Query
from pydantic import AwareDatetime, BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.errors import InvalidInput
from api.ops import MAX_PAGE, PURPOSE, Purpose, Reason, staff_actor
from api.tokens import Principal
from privacy.audit import VerifyReport
from privacy.postgres_gate import Actor
from privacy.postgres_oversight import AuditQuery, Page
from privacy.purposes import PurposeTable
from privacy.record import record_of_processing

MAX_LISTED = 100  # sequence numbers listed per finding; the counts are always complete
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
ACTOR_ID = r"^[A-Za-z0-9:_.@-]{1,128}$"


class Oversight(Protocol):
    """What the DPO routes need (``PostgresOversight``)."""

    def audit(self, actor: Actor, purpose: str, reason: str, query: AuditQuery) -> Page:
        """Audit events matching a query (audited)."""
        ...

    def requests(
        self, actor: Actor, purpose: str, reason: str, *, state: str, after: str | None, limit: int
    ) -> Page:
        """The data-subject request queue (audited)."""
        ...

    def verify(self) -> VerifyReport:
        """A full check of the audit log."""
        ...


class PageAnswer(BaseModel):
    """Rows of one page; pass ``next`` back as the cursor for the next one."""

    rows: list[dict[str, Any]]
    next: str | None = Field(description="Cursor of the next page; null at the end.")


class Finding(BaseModel):
    """How many, and the first of them."""

    count: int
    first: list[int]


class VerifyAnswer(BaseModel):
    """The audit log's check: ``ok`` is false on any edit, deletion, insertion or broken seal."""

    ok: bool
    checked_rows: int
    sealed_rows: int
    unsealed_rows: Finding
    edited: Finding
    deleted: Finding
    inserted: Finding
    broken_seals: Finding


def _finding(items: tuple[int, ...]) -> Finding:
    return Finding(count=len(items), first=list(items[:MAX_LISTED]))


def dpo_router(
    oversight: Oversight, purposes: PurposeTable, dpo: Callable[..., Principal]
) -> APIRouter:
    """``/v1/dpo``; *dpo* is ``Authenticator.requires(Role.DPO)``."""
    router = APIRouter(prefix="/v1/dpo", tags=["data-protection officer"])
    Dpo = Annotated[Principal, Depends(dpo)]  # noqa: N806 - a type alias

    @router.get("/audit", summary="Search the audit log (newest first, paged)")
    def audit(
        me: Dpo,
        purpose: Purpose,
        reason: Reason,
        subject_id: Annotated[str | None, Query(pattern=r"^u[0-9a-f]{24}$")] = None,
        actor_id: Annotated[str | None, Query(pattern=ACTOR_ID)] = None,
        for_purpose: Annotated[str | None, Query(pattern=PURPOSE)] = None,
        decision: Annotated[Literal["allow", "partial", "deny"] | None, Query()] = None,
        since: Annotated[AwareDatetime | None, Query()] = None,
        until: Annotated[AwareDatetime | None, Query()] = None,
        before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> PageAnswer:
        start, end = since or EARLIEST, until or LATEST
        if not start < end:
            raise InvalidInput("since must be before until")
        query = AuditQuery(
            since=start,
            until=end,
            subject_id=subject_id,
            actor_id=actor_id,
            purpose=for_purpose,
            decision=decision,
            before=before,
            limit=limit,
        )
        page = oversight.audit(staff_actor(me), purpose, reason, query)
        return PageAnswer(rows=page.rows, next=page.next_cursor)

    @router.post("/audit/verify", summary="Verify every audit row, seal and the seal chain")
    async def verify(me: Dpo) -> VerifyAnswer:
        del me
        report = await run_in_threadpool(oversight.verify)
        return VerifyAnswer(
            ok=report.ok,
            checked_rows=report.checked_rows,
            sealed_rows=report.sealed_rows,
            unsealed_rows=_finding(report.unsealed_rows),
            edited=_finding(report.edited),
            deleted=_finding(report.deleted),
            inserted=_finding(report.inserted),
            broken_seals=_finding(report.broken_seals),
        )

    @router.get(
        "/record-of-processing", summary="Art. 30 record of processing, from the purpose table"
    )
    def record(me: Dpo) -> dict[str, Any]:
        del me
        return record_of_processing(purposes, generated_at=datetime.now(UTC))

    @router.get("/requests", summary="Data-subject requests by due date (open, overdue, all)")
    def requests(
        me: Dpo,
        purpose: Purpose,
        reason: Reason,
        state: Annotated[Literal["open", "overdue", "all"], Query()] = "open",
        after: Annotated[str | None, Query(pattern=r"^r[0-9a-f]{24}$")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> PageAnswer:
        page = oversight.requests(
            staff_actor(me), purpose, reason, state=state, after=after, limit=limit
        )
        return PageAnswer(rows=page.rows, next=page.next_cursor)

    return router
