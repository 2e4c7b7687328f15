"""``qnect subject …`` and ``qnect privacy …``: data subjects, their rights, audited reads.

Every command that touches personal data names its actor (``--actor``, a staff id) and goes
through the privacy gate or the rights module, so it is audited like an API call would be.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import psycopg
import typer

from device_registry.postgres import current_kek_version
from device_registry.postgres_owners import assign_device
from device_registry.views import VIEWS
from privacy.errors import AccessDenied, PrivacyError
from privacy.fields import undeclared
from privacy.postgres import create_household, create_subject, live_columns
from privacy.postgres_gate import Actor, Scope
from privacy.purposes import default_table
from qnect.rights import Privacy, build
from qnect.settings import Settings

subject_app = typer.Typer(help="Data subjects and their rights (audited).", no_args_is_help=True)
privacy_app = typer.Typer(help="Purpose-bound reads and checks.", no_args_is_help=True)

ActorOpt = Annotated[str, typer.Option("--actor", help="Staff id of the person acting.")]
SubjectOpt = Annotated[str, typer.Option("--subject", help="Subject id.")]


@contextmanager
def _session() -> Iterator[tuple[psycopg.Connection[Any], Privacy, Settings]]:
    settings = Settings()  # type: ignore[call-arg]  # fields come from QNECT_* variables
    privacy = build(settings.root_key())
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        try:
            yield conn, privacy, settings
        except PrivacyError as exc:
            typer.echo(json.dumps({"error": type(exc).__name__, "detail": str(exc)}), err=True)
            raise typer.Exit(1) from None


def _dpo(actor: str) -> Actor:
    return Actor("staff", actor, frozenset({"dpo"}))


def _print(value: object) -> None:
    typer.echo(json.dumps(value, default=_jsonable, sort_keys=True))


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    return str(value)


@subject_app.command("create")
def subject_create(
    email: Annotated[str, typer.Option()],
    name: Annotated[str | None, typer.Option()] = None,
    household: Annotated[str | None, typer.Option(help="Existing household id.")] = None,
) -> None:
    """Create a data subject (and a household unless one is given); prints their ids."""
    with _session() as (conn, privacy, _settings):
        with conn.transaction():
            household_id = household or create_household(conn)
            kek = privacy.ring.kek(current_kek_version(conn))
            subject_id = create_subject(conn, kek, household_id, email=email, name=name)
        _print({"subject_id": subject_id, "household_id": household_id})


@subject_app.command("assign-device")
def subject_assign(device: Annotated[str, typer.Option()], subject: SubjectOpt) -> None:
    """Make the subject the owner of a device (a new binding with fresh data keys)."""
    with _session() as (conn, privacy, _settings):
        binding = assign_device(conn, privacy.ring, device, subject)
        _print({"device_id": device, "subject_id": subject, "binding": binding})


@subject_app.command("consent")
def subject_consent(
    subject: SubjectOpt,
    key: Annotated[str, typer.Option(help="marketing, personalisation, health, ...")],
    kind: Annotated[str, typer.Option(help="grant, withdraw, object or unobject")],
    actor: ActorOpt,
    source: Annotated[str, typer.Option(help="Where the statement came from.")] = "support",
) -> None:
    """Record a consent statement of the subject (health withdrawal shreds health data)."""
    with _session() as (conn, privacy, _settings):
        privacy.rights.consent(conn, _dpo(actor), subject, key, kind, source)
        _print({"subject_id": subject, "key": key, "kind": kind})


@subject_app.command("restrict")
def subject_restrict(
    subject: SubjectOpt, actor: ActorOpt, lift: Annotated[bool, typer.Option()] = False
) -> None:
    """Art. 18: restrict (or with --lift, unrestrict) processing of the subject's data."""
    with _session() as (conn, privacy, _settings):
        privacy.rights.restrict(conn, _dpo(actor), subject, restricted=not lift)
        _print({"subject_id": subject, "restricted": not lift})


@subject_app.command("rectify")
def subject_rectify(
    subject: SubjectOpt,
    actor: ActorOpt,
    email: Annotated[str | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Art. 16: correct the subject's e-mail address or name."""
    with _session() as (conn, privacy, _settings):
        privacy.rights.rectify(conn, _dpo(actor), subject, email=email, name=name)
        changed = [k for k, v in (("email", email), ("name", name)) if v is not None]
        _print({"subject_id": subject, "rectified": changed})


@subject_app.command("export")
def subject_export(subject: SubjectOpt, actor: ActorOpt) -> None:
    """Art. 15/20: everything held about the subject as one JSON document."""
    with _session() as (conn, privacy, _settings):
        request = privacy.rights.open_request(conn, subject, "export")
        _print(privacy.rights.export(conn, _dpo(actor), subject, request))


@subject_app.command("erase")
def subject_erase(subject: SubjectOpt, actor: ActorOpt) -> None:
    """Art. 17: delete the subject's rows, release their devices, destroy their keys."""
    with _session() as (conn, privacy, _settings):
        request = privacy.rights.open_request(conn, subject, "erase")
        report = privacy.rights.erase(conn, _dpo(actor), subject, request)
        _print(
            {
                "request_id": report.request_id,
                "rows_deleted": report.rows_deleted,
                "keys_destroyed": report.keys_destroyed,
                "devices_released": report.devices_released,
            }
        )


@privacy_app.command("read")
def privacy_read(
    view: Annotated[str, typer.Option(help=f"One of: {', '.join(VIEWS)}.")],
    purpose: Annotated[str, typer.Option()],
    subject: Annotated[list[str], typer.Option("--subject", help="Repeat for several.")],
    actor: ActorOpt,
    role: Annotated[str, typer.Option(help="support, analyst, marketing, operator, dpo")],
    reason: Annotated[str, typer.Option(help="Ticket or justification (audited).")],
) -> None:
    """Read a view of personal data under a purpose, as the gate allows it (audited)."""
    if view not in VIEWS:
        typer.echo(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}", err=True)
        raise typer.Exit(2)
    with _session() as (conn, privacy, _settings):
        staff = Actor("staff", actor, frozenset({role}))
        try:
            result = privacy.gate.read(
                conn, staff, purpose, VIEWS[view], Scope(subject), reason=reason
            )
        except AccessDenied as exc:
            _print({"error": "access_denied", "reason": exc.reason})
            raise typer.Exit(1) from None
        _print(
            {
                "verdict": result.verdict.value,
                "fields": result.fields,
                "masked": result.masked,
                "denied": result.denied,
                "excluded": result.excluded,
                "audit_seq": result.audit_seq,
                "rows": result.rows,
            }
        )


@privacy_app.command("check")
def privacy_check() -> None:
    """Fail if a database column is missing from the field registry."""
    with _session() as (conn, _privacy, _settings):
        missing = undeclared(live_columns(conn))
        _print({"undeclared": missing, "checked_at": datetime.now(UTC)})
        if missing:
            raise typer.Exit(1)


@privacy_app.command("purposes")
def privacy_purposes() -> None:
    """The purpose table in force (version and hash), as the record of processing uses it."""
    table = default_table()
    _print(
        {
            "policy_version": table.policy_version,
            "purposes": {
                key: {
                    "title": p.title,
                    "data_use": p.data_use,
                    "legal_basis": p.legal_basis.value,
                    "consent": p.consent,
                    "art9": p.art9.condition if p.art9 else None,
                    "allowed": p.allowed,
                    "prohibited": p.prohibited,
                    "transforms": {k: v.value for k, v in p.transforms.items()},
                    "roles": sorted(p.roles),
                }
                for key, p in table.purposes.items()
            },
        }
    )
