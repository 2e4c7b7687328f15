"""``qnect broker …``: keep a Mosquitto dynamic-security broker in step with the registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from broker_bridge.errors import BrokerAdminError
from qnect import broker, local_broker
from qnect.settings import Settings

broker_app = typer.Typer(
    help="Broker identities (Mosquitto dynamic security).", no_args_is_help=True
)


def _settings() -> Settings:
    return Settings()  # type: ignore[call-arg]  # fields come from QNECT_* variables


@broker_app.command("init")
def broker_init(
    dynsec_file: Annotated[Path, typer.Option(help="dynsec.json to create (mode 0600).")],
) -> None:
    """Create the broker's dynsec file with the admin identity Qnect derives (no secret shown)."""
    if dynsec_file.exists():
        typer.echo(f"{dynsec_file} exists; leaving it alone", err=True)
        raise typer.Exit(1)
    password = _settings().registry_keys().broker.service("admin")
    local_broker.init_dynsec_file(dynsec_file, password)
    typer.echo(f"created {dynsec_file}; start mosquitto, then run `qnect broker sync`")


@broker_app.command("sync")
def broker_sync(
    offline: Annotated[
        Path | None,
        typer.Option(
            "--offline",
            help="Write this dynsec.json instead (broker stopped): O(n), for large fleets.",
        ),
    ] = None,
) -> None:
    """Reconcile the broker with the registry: create missing identities, remove revoked ones."""
    if offline is not None:
        devices = broker.write_offline(_settings(), offline)
        typer.echo(json.dumps({"written": str(offline), "devices": devices}))
        return
    try:
        plan = broker.sync(_settings())
    except (BrokerAdminError, OSError) as exc:
        typer.echo(f"broker sync failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        json.dumps({"created": plan.created, "removed": plan.removed, "services": plan.services})
    )
