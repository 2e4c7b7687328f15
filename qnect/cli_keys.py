"""``qnect keys rotate`` and ``qnect keys destroy-expired``: device root-key rotation.

The command stages new root keys in batches for connected devices; bridge workers offer them
on each device's downlink and commit a rotation when the device proves it holds the new key.
The command only watches the registry (it never talks to the broker), so it can be stopped and
run again: offers already staged are awaited, devices rotated in this run are not rotated twice.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated

import psycopg
import typer
from rich.progress import Progress

from device_registry.postgres_rekey import (
    RotationProgress,
    RotationScope,
    destroy_expired,
    progress,
    stage,
)
from device_registry.profiles import MODELS
from qnect.settings import Settings

POLL_S = 0.5  # how often the registry is asked for progress (one aggregate query)


def register(keys_app: typer.Typer) -> None:
    """Add the rotation commands to ``qnect keys``."""
    keys_app.command("rotate")(keys_rotate)
    keys_app.command("destroy-expired")(keys_destroy_expired)


def _scope(devices: list[str], models: list[str], everything: bool) -> RotationScope:
    if sum(map(bool, (devices, models, everything))) != 1:
        typer.echo("name exactly one of --device, --model, --all", err=True)
        raise typer.Exit(2)
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        typer.echo(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
        raise typer.Exit(2)
    return RotationScope(tuple(devices), tuple(models), everything)


def keys_rotate(
    device: Annotated[list[str] | None, typer.Option(help="Device id (repeatable).")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Device model (repeatable).")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every device.")] = False,
    batch: Annotated[int, typer.Option(min=1, help="Devices re-keying at a time.")] = 100,
    timeout: Annotated[float, typer.Option(help="Give up after this long without progress.")] = 60,
) -> None:
    """Rotate device root keys over the downlink; prints {total, rotated, pending, skipped}.

    Only connected devices are offered a key; the rest are skipped (run it again later).
    Exit code 1 when offers are still unanswered at the timeout.
    """
    scope = _scope(device or [], model or [], everything)
    settings = Settings()  # type: ignore[call-arg]  # fields come from QNECT_* variables
    ring = settings.kek_ring()
    with (
        psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn,
        Progress(transient=True) as bar,
    ):
        row = conn.execute("SELECT statement_timestamp()").fetchone()
        assert row is not None  # noqa: S101 - a SELECT without FROM returns a row
        since: datetime = row[0]
        task = bar.add_task("rotating root keys", total=None)
        last, changed_at = None, time.monotonic()
        while True:
            now = progress(conn, scope, since=since)
            staged = stage(conn, ring, scope, since=since, limit=max(0, batch - now.pending))
            bar.update(task, completed=now.rotated, total=now.total)
            if now.pending == 0 and staged == 0:
                break
            if (now, staged) != last:
                last, changed_at = (now, staged), time.monotonic()
            elif time.monotonic() - changed_at > timeout:
                break
            time.sleep(POLL_S)
        result = progress(conn, scope, since=since)
    typer.echo(json.dumps(_summary(result)))
    if result.pending:
        raise typer.Exit(1)


def _summary(result: RotationProgress) -> dict[str, int]:
    skipped = result.total - result.rotated - result.pending
    return {
        "total": result.total,
        "rotated": result.rotated,
        "pending": result.pending,
        "skipped": skipped,  # offline, or not yet re-keyed since an earlier rotation
    }


def keys_destroy_expired() -> None:
    """Destroy previous root keys whose grace period ended (workers also do it every 30 s)."""
    settings = Settings()  # type: ignore[call-arg]
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        destroyed = destroy_expired(conn, now=datetime.now(UTC))
    typer.echo(json.dumps({"destroyed": destroyed}))
