"""``qnect ota …``: release keys, signed manifests, artifacts and campaigns.

``keygen`` and ``sign-manifest`` run offline, on the release machine: they never read the
server's settings, and the release key never goes near the server (which holds only the
public key, ``QNECT_OTA_RELEASE_PUBKEY``). The other commands talk to the registry directly,
as the operator routes do (``/v1/firmware``, ``/v1/campaigns``); each prints one JSON line.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.progress import Progress

from crypto.errors import CryptoError
from crypto.firmware import (
    Manifest,
    artifact_digest,
    load_private_pem,
    new_release_key,
    private_pem,
    public_bytes,
    sign_manifest,
)
from device_registry.errors import CampaignConflict, FirmwareRejected, NotVisible
from device_registry.ota import CampaignStatus
from device_registry.postgres_firmware import (
    CampaignSpec,
    act,
    artifacts,
    campaign,
    campaigns,
    create_campaign,
    upload,
)
from qnect.settings import Settings

ota_app = typer.Typer(help="Signed firmware and staged OTA campaigns.", no_args_is_help=True)
campaign_app = typer.Typer(help="OTA campaigns.", no_args_is_help=True)
ota_app.add_typer(campaign_app, name="campaign")
WATCH_POLL_S = 1.0
_FINAL = {CampaignStatus.HALTED, CampaignStatus.COMPLETED, CampaignStatus.ABORTED}


def _echo(value: Any) -> None:
    typer.echo(json.dumps(value, default=str, sort_keys=True))


def _connect() -> psycopg.Connection[Any]:
    settings = Settings()  # type: ignore[call-arg]  # fields come from QNECT_* variables
    return psycopg.connect(settings.database_url.get_secret_value(), autocommit=True)


def _refused(exc: FirmwareRejected | CampaignConflict | NotVisible) -> typer.Exit:
    if isinstance(exc, FirmwareRejected):
        _echo({"refused": exc.reason, "detail": exc.detail})
    elif isinstance(exc, CampaignConflict):
        _echo({"refused": "campaign_conflict", "detail": exc.status})
    else:
        _echo({"refused": "not_found"})
    return typer.Exit(1)


@ota_app.command("keygen")
def keygen(out: Annotated[Path, typer.Option(help="Release key file to create (0600).")]) -> None:
    """Create a release signing key (offline); prints its public key for devices and server."""
    key = new_release_key()
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        typer.echo(f"{out} exists; refusing to overwrite", err=True)
        raise typer.Exit(1) from None
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))
    _echo({"public_key": public_bytes(key).hex()})


@ota_app.command("sign-manifest")
def sign(
    key: Annotated[Path, typer.Option(help="Release key (PEM, from `qnect ota keygen`).")],
    artifact: Annotated[Path, typer.Option(help="The firmware image.")],
    version: Annotated[str, typer.Option(help="MAJOR.MINOR.PATCH of the image.")],
    seq: Annotated[int, typer.Option(min=1, help="Anti-rollback sequence number.")],
    model: Annotated[list[str], typer.Option(help="Compatible model (repeatable).")],
    min_version: Annotated[str, typer.Option(help="Oldest version it may replace.")],
    out: Annotated[Path, typer.Option(help="Signed manifest file to write.")],
) -> None:
    """Sign a manifest for an image (offline); writes {manifest, signature} as base64 JSON."""
    content = artifact.read_bytes()
    manifest = Manifest(
        version, seq, tuple(model), min_version, len(content), artifact_digest(content)
    )
    try:
        signed = sign_manifest(load_private_pem(key.read_bytes()), manifest)
    except CryptoError as exc:
        typer.echo(f"cannot sign: {exc}", err=True)
        raise typer.Exit(2) from None
    out.write_text(
        json.dumps(
            {
                "manifest": base64.b64encode(signed.blob).decode(),
                "signature": base64.b64encode(signed.signature).decode(),
            }
        )
    )
    _echo(json.loads(signed.blob))


@ota_app.command("upload")
def upload_cmd(
    signed: Annotated[Path, typer.Option(help="Signed manifest (from sign-manifest).")],
    artifact: Annotated[Path, typer.Option(help="The firmware image.")],
    actor: Annotated[str, typer.Option(help="Who uploads (recorded).")] = "cli",
) -> None:
    """Verify (release key, size, SHA-256, sequence) and store an artifact."""
    doc = json.loads(signed.read_text())
    blob, signature = base64.b64decode(doc["manifest"]), base64.b64decode(doc["signature"])
    settings = Settings()  # type: ignore[call-arg]
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        try:
            stored = upload(
                conn,
                blob,
                signature,
                artifact.read_bytes(),
                release_key=settings.ota_release_key(),
                actor=actor,
            )
        except FirmwareRejected as exc:
            raise _refused(exc) from None
    _echo(dataclasses.asdict(stored))


@ota_app.command("list")
def list_cmd() -> None:
    """Stored artifacts, newest first."""
    with _connect() as conn:
        _echo([dataclasses.asdict(a) for a in artifacts(conn)])


@campaign_app.command("create")
def create_cmd(
    name: Annotated[str, typer.Option()],
    artifact: Annotated[int, typer.Option(help="Artifact id.")],
    model: Annotated[str, typer.Option()],
    from_min: Annotated[str, typer.Option(help="Lowest firmware targeted.")],
    from_max: Annotated[str, typer.Option(help="Highest firmware targeted.")],
    waves: Annotated[str, typer.Option(help="Cumulative percentages.")] = "1,10,50,100",
    threshold: Annotated[float, typer.Option(help="Halt above this failed share.")] = 0.05,
    device: Annotated[list[str] | None, typer.Option(help="Only this device.")] = None,
    actor: Annotated[str, typer.Option(help="Who starts it (recorded).")] = "cli",
) -> None:
    """Create and start a staged campaign; prints it with its counts."""
    try:
        percents = tuple(int(p) for p in waves.split(","))
    except ValueError:
        typer.echo("--waves takes integers like 1,10,50,100", err=True)
        raise typer.Exit(2) from None
    spec = CampaignSpec(
        name, artifact, model, from_min, from_max, percents, threshold, tuple(device or ())
    )
    with _connect() as conn:
        try:
            made = create_campaign(conn, spec, actor=actor, now=datetime.now(UTC))
        except (FirmwareRejected, CampaignConflict, NotVisible) as exc:
            raise _refused(exc) from None
        _echo(dataclasses.asdict(campaign(conn, made)))


@campaign_app.command("list")
def campaigns_cmd() -> None:
    """Campaigns, newest first."""
    with _connect() as conn:
        _echo([dataclasses.asdict(c) for c in campaigns(conn)])


@campaign_app.command("show")
def show_cmd(
    campaign_id: int,
    watch: Annotated[bool, typer.Option(help="Show progress until it ends.")] = False,
) -> None:
    """A campaign with counts per state and wave (``--watch``: until halted/completed/aborted)."""
    with _connect() as conn:
        try:
            now = campaign(conn, campaign_id)
            if watch:
                with Progress(transient=True) as bar:
                    task = bar.add_task(f"campaign {campaign_id}", total=now.devices or 1)
                    while CampaignStatus(now.status) not in _FINAL:
                        done = sum(now.states.get(s, 0) for s in ("succeeded", "failed"))
                        bar.update(task, completed=done)
                        time.sleep(WATCH_POLL_S)
                        now = campaign(conn, campaign_id)
        except NotVisible as exc:
            raise _refused(exc) from None
        _echo(dataclasses.asdict(now))


def _action(action: str) -> Any:
    def run(campaign_id: int) -> None:
        with _connect() as conn:
            try:
                done = act(conn, campaign_id, action, now=datetime.now(UTC))
            except (CampaignConflict, NotVisible) as exc:
                raise _refused(exc) from None
            _echo(dataclasses.asdict(done))

    run.__doc__ = {
        "pause": "Stop offering to new devices (those under way finish).",
        "resume": "Offer again (a paused campaign).",
        "abort": "Stop for good: no more offers or chunks; unfinished devices cancelled.",
    }[action]
    return run


for _name in ("pause", "resume", "abort"):
    campaign_app.command(_name)(_action(_name))
